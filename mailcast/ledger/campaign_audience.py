"""What the ledger knows about a campaign's audience across runs: the keys each address received
(``once_per_contact``), the earlier runs that sent a campaign to the same recipients source
(``allow_repeats``), and the list a run was sent to (one-click unsubscribes of list campaigns).

``contact_sends`` is filled at the end of every real run of a campaign with a ``key``, set-based
from its sent deliveries (``record_sends``). That is crash-safe without a write per message:
until a run's end has recorded them, its deliveries are the record, and ``already_sent`` reads
both (the addresses in ``contact_sends`` for the key, and those of other real runs of the key
whose rows are sent, in flight, unknown or still pending: a paused run would send them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, func, literal, select

from mailcast.ledger.events import insert_ignoring_duplicates
from mailcast.ledger.models import (
    PENDING,
    SENDING,
    SENT,
    UNKNOWN,
    Campaign,
    ContactSend,
    Delivery,
    Run,
    RunStatus,
    utcnow,
)

D = cast(Table, Delivery.__table__)
R = cast(Table, Run.__table__)
K = cast(Table, Campaign.__table__)
CS = cast(Table, ContactSend.__table__)

_HELD = (SENT, SENDING, UNKNOWN, PENDING)


def _key_runs(engine: Engine, key: str, *, exclude: str | None = None) -> list[str]:
    """Real runs of campaigns whose spec has ``key`` (with or without ``once_per_contact``: an
    address that received the key received it)."""
    query = select(R.c.id, R.c.spec).where(R.c.dry_run == False)  # noqa: E712
    query = query.where(R.c.spec["key"].as_string() == key)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [run_id for run_id, spec in rows if run_id != exclude and isinstance(spec, dict)]


def already_sent(engine: Engine, key: str, *, exclude_run: str | None = None) -> set[str]:
    """Address keys that received ``key`` (or hold it in another real run's open rows)."""
    with engine.connect() as conn:
        found = set(conn.execute(select(CS.c.address_key).where(CS.c.key == key)).scalars())
    runs = _key_runs(engine, key, exclude=exclude_run)
    if runs:
        query = select(D.c.address_key).where(
            D.c.run_id.in_(runs), D.c.status.in_(_HELD), D.c.address_key.is_not(None)
        )
        with engine.connect() as conn:
            for batch in (
                conn.execution_options(yield_per=50_000).execute(query).scalars().partitions()
            ):
                found.update(batch)
    return found


def record_sends(engine: Engine, run_id: str) -> int:
    """Record (key, address) for every sent row of run ``run_id`` of a campaign with a ``key``
    (a real run); one INSERT … SELECT, addresses recorded before are kept. Returns how many were
    new."""
    with engine.begin() as conn:
        row = conn.execute(select(R.c.spec, R.c.dry_run).where(R.c.id == run_id)).first()
        if row is None or row.dry_run or not isinstance(row.spec, dict):
            return 0
        key = row.spec.get("key")
        if not key:
            return 0
        picked = select(
            literal(str(key)).label("key"),
            D.c.address_key,
            D.c.run_id,
            func.coalesce(D.c.sent_at, utcnow()).label("sent_at"),
        ).where(D.c.run_id == run_id, D.c.status == SENT, D.c.address_key.is_not(None))
        stmt = insert_ignoring_duplicates(conn, CS, ("key", "address_key")).from_select(
            ["key", "address_key", "run_id", "sent_at"], picked
        )
        return conn.execute(stmt).rowcount or 0


@dataclass(frozen=True)
class EarlierRun:
    id: str
    created_at: datetime
    finished_at: datetime | None


def completed_runs_to(
    engine: Engine, campaign: str, spec: dict[str, Any], *, exclude: str | None = None
) -> list[EarlierRun]:
    """Completed real runs of ``campaign`` sent to the recipients source of ``spec`` (a
    campaign spec as JSON: see ``same_source``), newest first."""
    query = (
        select(R.c.id, R.c.spec, R.c.created_at, R.c.finished_at)
        .join(K, K.c.id == R.c.campaign_id)
        .where(K.c.name == campaign, R.c.status == RunStatus.COMPLETED, R.c.dry_run == False)  # noqa: E712
        .order_by(R.c.created_at.desc())
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        EarlierRun(r.id, r.created_at, r.finished_at)
        for r in rows
        if r.id != exclude and isinstance(r.spec, dict) and same_source(r.spec, spec)
    ]


def source_of(spec: dict[str, Any]) -> Any:
    """What identifies a spec's recipients source: its options (those left unset ignored, so a
    run recorded before an option existed compares equal), a file by its path made absolute
    against the campaign folder (``data.csv`` of two campaign folders are two sources)."""
    recipients = spec.get("recipients")
    if not isinstance(recipients, dict):
        return recipients
    found = {k: v for k, v in recipients.items() if v is not None}
    path = found.get("path")
    if isinstance(path, str):
        base = spec.get("base_dir")
        base = base if isinstance(base, str) else "."
        found["path"] = os.path.abspath(os.path.join(os.path.expanduser(base), path))
    return found


def same_source(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two campaign specs (as JSON) send to the same recipients source."""
    return bool(source_of(a) == source_of(b))


def list_of_run(engine: Engine, run_id: str) -> str | None:
    """The list a run was sent to (``recipients: {list: NAME}``), None for other sources: the
    one-click unsubscribe of a list campaign leaves that list."""
    with engine.connect() as conn:
        spec = conn.execute(select(R.c.spec).where(R.c.id == run_id)).scalar()
    if not isinstance(spec, dict):
        return None
    recipients = spec.get("recipients")
    name = recipients.get("list") if isinstance(recipients, dict) else None
    return name if isinstance(name, str) else None
