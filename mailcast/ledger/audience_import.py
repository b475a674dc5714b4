"""The bulk import of contacts into a list (``mailcast lists import``): its statements.

Postgres: the rows are COPied into a temporary staging table, classified in one set-based
``CREATE TEMP TABLE … AS SELECT`` (an existing contact? blocklisted? unsubscribed from the list?
an erased or deleted person?), then written with one ``INSERT … SELECT`` for the new contacts,
one ``UPDATE … FROM`` for the changed ones, and one ``INSERT … SELECT`` for the new memberships
that feeds the consent records' ``INSERT … SELECT`` (a data-modifying CTE). SQLite: the same
decisions per batch of rows, written with executemany.

The caller owns the transaction (a dry run rolls it back: the same report, nothing written).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, text, update

from mailcast.ledger.audiences import (
    CR,
    CT,
    DELETED_PREFIX,
    ER,
    MT,
    address_hash,
    deleted_hash,
)
from mailcast.ledger.models import ConsentAction, ConsentMethod, ContactStatus, MembershipStatus

BATCH = 5_000

# The reasons an import reports a row it does not import (beside the validation's own).
ERASED = "erased: not imported (the person asked to be erased)"
DELETED = "deleted: not imported (the contact was deleted; `mailcast contacts add` brings it back)"
BLOCKLISTED = "blocklisted: not imported"
UNSUBSCRIBED = "unsubscribed from the list: not resubscribed"


@dataclass(slots=True)
class StagedRow:
    """A valid row of the import: what the contact would become."""

    row: int
    address: str
    key: str
    name: str | None
    attributes: dict[str, Any]


@dataclass(slots=True)
class Outcome:
    """What the import wrote (or would write, in a dry run)."""

    new: int = 0  # contacts created
    changed: int = 0  # existing contacts whose name or attributes changed
    unchanged: int = 0  # existing contacts left as they were
    joined: int = 0  # new memberships of the list (each with a consent record)
    already: int = 0  # already members (confirmed or unconfirmed): left as they were
    reported: list[tuple[int, str, str]] = field(default_factory=list)  # (row, address, reason)


@dataclass(frozen=True, slots=True)
class Target:
    list_id: int
    status: str  # the new members' status
    replace: bool  # attributes replaced (True) or merged (False)
    source: str | None  # the consent records' source
    consent_text: str | None
    now: datetime


def import_rows(conn: Connection, rows: Iterable[StagedRow], target: Target) -> Outcome:
    """Upsert the rows' contacts and their memberships of the list; see the module's text."""
    if conn.dialect.name == "postgresql":
        return _postgres(conn, rows, target)
    outcome = Outcome()
    for batch in _batches(rows, BATCH):
        _sqlite_batch(conn, batch, target, outcome)
    outcome.reported.sort()
    return outcome


def _batches(rows: Iterable[StagedRow], size: int) -> Iterator[list[StagedRow]]:
    batch: list[StagedRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- Postgres: COPY, then set-based statements ----------------------------------------------------

_STAGE = """
CREATE TEMPORARY TABLE mailcast_import_stage (
    row_no integer, address text, address_key text, name text, attributes jsonb
) ON COMMIT DROP
"""

# One pass over the staged rows: each row's contact (if any), membership of the list (if any),
# whether the person was erased or deleted, and whether the contact would change.
_CLASSIFY = """
CREATE TEMPORARY TABLE mailcast_import_rows ON COMMIT DROP AS
SELECT s.row_no, s.address, s.address_key, s.name, s.attributes,
       c.id AS contact_id,
       m.status AS member_status,
       CASE
         WHEN c.id IS NULL AND e.address_hash IS NOT NULL THEN :erased
         WHEN c.id IS NULL AND d.address_hash IS NOT NULL THEN :deleted
         WHEN c.status = :blocklisted_status THEN :blocklisted
         WHEN m.status = :unsubscribed_status THEN :unsubscribed
       END AS reason,
       (c.id IS NOT NULL
        AND (s.name IS NULL OR s.name IS NOT DISTINCT FROM c.name)
        AND CASE WHEN :replace THEN c.attributes = s.attributes
                 ELSE c.attributes @> s.attributes END) AS same
FROM mailcast_import_stage AS s
LEFT JOIN contacts AS c ON c.address_key = s.address_key
LEFT JOIN memberships AS m ON m.contact_id = c.id AND m.list_id = :list_id
LEFT JOIN erased_contacts AS e
  ON c.id IS NULL
  AND e.address_hash = encode(sha256(convert_to(s.address_key, 'UTF8')), 'hex')
LEFT JOIN erased_contacts AS d
  ON c.id IS NULL
  AND d.address_hash = encode(sha256(convert_to(:deleted_prefix || s.address_key, 'UTF8')), 'hex')
"""

_INSERT_CONTACTS = """
INSERT INTO contacts (address, address_key, name, attributes, status, created_at, updated_at)
SELECT address, address_key, name, attributes, :enabled, :now, :now
FROM mailcast_import_rows
WHERE contact_id IS NULL AND reason IS NULL
ON CONFLICT (address_key) DO NOTHING
"""

_UPDATE_CONTACTS = """
UPDATE contacts AS c
SET attributes = CASE WHEN :replace THEN r.attributes ELSE c.attributes || r.attributes END,
    name = coalesce(r.name, c.name),
    updated_at = :now
FROM mailcast_import_rows AS r
WHERE c.id = r.contact_id AND r.reason IS NULL AND NOT r.same
"""

_INSERT_MEMBERSHIPS = """
WITH joined AS (
    INSERT INTO memberships (contact_id, list_id, status, created_at, updated_at)
    SELECT c.id, :list_id, :member_status, :now, :now
    FROM mailcast_import_rows AS r
    JOIN contacts AS c ON c.address_key = r.address_key
    WHERE r.reason IS NULL AND r.member_status IS NULL
    ON CONFLICT (contact_id, list_id) DO NOTHING
    RETURNING contact_id
)
INSERT INTO consent_records (contact_id, list_id, action, method, source, consent_text, at)
SELECT contact_id, :list_id, :subscribe, :import_method, :source, :consent_text, :now
FROM joined
"""

_COUNTS = """
SELECT count(*) FILTER (WHERE reason IS NULL) AS ok,
       count(*) FILTER (WHERE reason IS NULL AND contact_id IS NOT NULL AND same) AS unchanged,
       count(*) FILTER (WHERE reason IS NULL AND member_status IS NOT NULL) AS already
FROM mailcast_import_rows
"""

_REPORTED = """
SELECT row_no, address, reason FROM mailcast_import_rows WHERE reason IS NOT NULL ORDER BY row_no
"""


def _postgres(conn: Connection, rows: Iterable[StagedRow], target: Target) -> Outcome:
    raw = conn.connection.driver_connection
    assert raw is not None
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    conn.execute(text(_STAGE))
    with raw.cursor() as cur:
        copy_sql = (
            "COPY mailcast_import_stage (row_no, address, address_key, name, attributes) FROM STDIN"
        )
        with cur.copy(copy_sql) as copy:
            for r in rows:
                copy.write_row((r.row, r.address, r.key, r.name, dumps(r.attributes)))
    conn.execute(text("ANALYZE mailcast_import_stage"))
    conn.execute(
        text(_CLASSIFY),
        {
            "erased": ERASED,
            "deleted": DELETED,
            "blocklisted": BLOCKLISTED,
            "unsubscribed": UNSUBSCRIBED,
            "blocklisted_status": ContactStatus.BLOCKLISTED.value,
            "unsubscribed_status": MembershipStatus.UNSUBSCRIBED.value,
            "replace": target.replace,
            "list_id": target.list_id,
            "deleted_prefix": DELETED_PREFIX,
        },
    )
    conn.execute(text("ANALYZE mailcast_import_rows"))
    outcome = Outcome()
    counts = conn.execute(text(_COUNTS)).one()
    outcome.new = (
        conn.execute(
            text(_INSERT_CONTACTS), {"enabled": ContactStatus.ENABLED.value, "now": target.now}
        ).rowcount
        or 0
    )
    outcome.changed = (
        conn.execute(
            text(_UPDATE_CONTACTS), {"replace": target.replace, "now": target.now}
        ).rowcount
        or 0
    )
    outcome.joined = (
        conn.execute(
            text(_INSERT_MEMBERSHIPS),
            {
                "list_id": target.list_id,
                "member_status": target.status,
                "now": target.now,
                "subscribe": ConsentAction.SUBSCRIBE.value,
                "import_method": ConsentMethod.IMPORT.value,
                "source": target.source[:500] if target.source else None,
                "consent_text": target.consent_text,
            },
        ).rowcount
        or 0
    )
    outcome.unchanged = counts.unchanged
    outcome.already = counts.already
    outcome.reported = [(r, a, why) for r, a, why in conn.execute(text(_REPORTED)).all()]
    return outcome


# -- SQLite (and the reference semantics): per batch, executemany -------------------------------


def _sqlite_batch(
    conn: Connection, batch: Sequence[StagedRow], target: Target, outcome: Outcome
) -> None:
    keys = [r.key for r in batch]
    existing = {
        row.address_key: row
        for row in conn.execute(
            select(CT.c.id, CT.c.address_key, CT.c.name, CT.c.attributes, CT.c.status).where(
                CT.c.address_key.in_(keys)
            )
        ).all()
    }
    ids = [row.id for row in existing.values()]
    member = {
        cid: status
        for cid, status in conn.execute(
            select(MT.c.contact_id, MT.c.status).where(
                MT.c.list_id == target.list_id, MT.c.contact_id.in_(ids)
            )
        ).all()
    }
    missing = [r.key for r in batch if r.key not in existing]
    hashes = {address_hash(k): k for k in missing} | {deleted_hash(k): k for k in missing}
    gone = set(
        conn.execute(select(ER.c.address_hash).where(ER.c.address_hash.in_(list(hashes))))
        .scalars()
        .all()
    )
    new_rows: list[dict[str, Any]] = []
    changed_rows: list[dict[str, Any]] = []
    to_join: list[StagedRow] = []
    for r in batch:
        c = existing.get(r.key)
        if c is None:
            if address_hash(r.key) in gone:
                outcome.reported.append((r.row, r.address, ERASED))
                continue
            if deleted_hash(r.key) in gone:
                outcome.reported.append((r.row, r.address, DELETED))
                continue
            new_rows.append(
                {
                    "address": r.address,
                    "address_key": r.key,
                    "name": r.name,
                    "attributes": r.attributes,
                    "status": ContactStatus.ENABLED.value,
                    "created_at": target.now,
                    "updated_at": target.now,
                }
            )
            to_join.append(r)
            continue
        if c.status == ContactStatus.BLOCKLISTED:
            outcome.reported.append((r.row, r.address, BLOCKLISTED))
            continue
        status = member.get(c.id)
        if status == MembershipStatus.UNSUBSCRIBED:
            outcome.reported.append((r.row, r.address, UNSUBSCRIBED))
            continue
        current = dict(c.attributes or {})
        attributes = dict(r.attributes) if target.replace else {**current, **r.attributes}
        name = r.name if r.name is not None else c.name
        if attributes != current or name != c.name:
            changed_rows.append({"cid": c.id, "attributes": attributes, "name": name})
            outcome.changed += 1
        else:
            outcome.unchanged += 1
        if status is None:
            to_join.append(r)
        else:
            outcome.already += 1
    if new_rows:
        conn.execute(insert(CT), new_rows)
        outcome.new += len(new_rows)
    if changed_rows:
        conn.execute(
            update(CT)
            .where(CT.c.id == bindparam("cid"))
            .values(
                attributes=bindparam("attributes"),
                name=bindparam("name"),
                updated_at=target.now,
            ),
            changed_rows,
        )
    if to_join:
        join_keys = [r.key for r in to_join]
        cids = list(
            conn.execute(select(CT.c.id).where(CT.c.address_key.in_(join_keys))).scalars().all()
        )
        conn.execute(
            insert(MT),
            [
                {
                    "contact_id": cid,
                    "list_id": target.list_id,
                    "status": target.status,
                    "created_at": target.now,
                    "updated_at": target.now,
                }
                for cid in cids
            ],
        )
        conn.execute(
            insert(CR),
            [
                {
                    "contact_id": cid,
                    "list_id": target.list_id,
                    "action": ConsentAction.SUBSCRIBE.value,
                    "method": ConsentMethod.IMPORT.value,
                    "source": target.source[:500] if target.source else None,
                    "consent_text": target.consent_text,
                    "at": target.now,
                }
                for cid in cids
            ],
        )
        outcome.joined += len(cids)
