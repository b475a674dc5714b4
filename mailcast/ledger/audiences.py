"""The audiences' statements: contacts, lists, memberships, consent records, erased people, and
what a privacy request reads and rewrites. The library API over them is
``mailcast.recipients.contacts`` (and ``lists``, ``list_import``, ``privacy``); the bulk import's
statements are in ``mailcast.ledger.audience_import``.

Every function takes an open ``Connection`` (the caller owns the transaction), except the
readers named ``*_engine``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, RowMapping, Table, delete, func, insert, or_, select, update

from mailcast.ledger.events import insert_ignoring_duplicates
from mailcast.ledger.models import (
    ConsentRecord,
    Contact,
    Delivery,
    ErasedContact,
    Event,
    InboundMessage,
    MailingList,
    Membership,
    Suppression,
    utcnow,
)

CT = cast(Table, Contact.__table__)
LT = cast(Table, MailingList.__table__)
MT = cast(Table, Membership.__table__)
CR = cast(Table, ConsentRecord.__table__)
ER = cast(Table, ErasedContact.__table__)
D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
IM = cast(Table, InboundMessage.__table__)
S = cast(Table, Suppression.__table__)

SOURCE_LIMIT = 500
# A deleted contact's marker in ``erased_contacts``: the SHA-256 of this prefix and the address
# key (an erased person's is the SHA-256 of the address key alone), so an import can tell the
# two apart and report either instead of bringing the person back.
DELETED_PREFIX = "deleted:"


def address_hash(address_key: str) -> str:
    """SHA-256 (hex) of an address key: what ``erased_contacts`` holds for an erased person."""
    return hashlib.sha256(address_key.encode("utf-8", "surrogatepass")).hexdigest()


def deleted_hash(address_key: str) -> str:
    """The marker ``erased_contacts`` holds for a deleted contact."""
    return address_hash(DELETED_PREFIX + address_key)


# -- contacts ----------------------------------------------------------------------------------


def contact_by_key(conn: Connection, address_key: str) -> RowMapping | None:
    return conn.execute(select(CT).where(CT.c.address_key == address_key)).mappings().first()


def insert_contact(
    conn: Connection,
    *,
    address: str,
    address_key: str,
    name: str | None,
    attributes: Mapping[str, Any],
    status: str,
) -> int:
    now = utcnow()
    return int(
        conn.execute(
            insert(CT)
            .values(
                address=address,
                address_key=address_key,
                name=name,
                attributes=dict(attributes),
                status=status,
                created_at=now,
                updated_at=now,
            )
            .returning(CT.c.id)
        ).scalar_one()
    )


def update_contact(conn: Connection, contact_id: int, **values: Any) -> None:
    conn.execute(update(CT).where(CT.c.id == contact_id).values(**values, updated_at=utcnow()))


def delete_contact(conn: Connection, contact_id: int) -> None:
    """Delete the contact and its memberships (consent records keep, ``contact_id`` NULL)."""
    conn.execute(delete(MT).where(MT.c.contact_id == contact_id))
    conn.execute(update(CR).where(CR.c.contact_id == contact_id).values(contact_id=None))
    conn.execute(delete(CT).where(CT.c.id == contact_id))


def search_contacts(
    conn: Connection,
    *,
    text: str | None = None,
    list_id: int | None = None,
    member_status: str | None = None,
    status: str | None = None,
    attributes: Mapping[str, str] | None = None,
    limit: int | None = 50,
    offset: int = 0,
) -> list[RowMapping]:
    """Contacts whose address or name contains ``text`` (case-insensitive), on list
    ``list_id`` (with ``member_status``), with ``status``, whose attributes equal
    ``attributes``; ordered by address."""
    query = select(CT).order_by(CT.c.address_key)
    if text:
        needle = text.lower()
        query = query.where(
            or_(
                CT.c.address_key.contains(needle, autoescape=True),
                func.lower(CT.c.name).contains(needle, autoescape=True),
            )
        )
    if list_id is not None:
        on_list = select(MT.c.contact_id).where(MT.c.list_id == list_id)
        if member_status:
            on_list = on_list.where(MT.c.status == member_status)
        query = query.where(CT.c.id.in_(on_list))
    if status:
        query = query.where(CT.c.status == status)
    for key, value in (attributes or {}).items():
        query = query.where(CT.c.attributes[key].as_string() == value)
    if limit:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    return list(conn.execute(query).mappings().all())


def count_contacts(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(CT)).scalar_one())


# -- lists -------------------------------------------------------------------------------------


def list_by_name(conn: Connection, name: str) -> RowMapping | None:
    return conn.execute(select(LT).where(LT.c.name == name)).mappings().first()


def all_lists(conn: Connection) -> list[RowMapping]:
    return list(conn.execute(select(LT).order_by(LT.c.name)).mappings().all())


def insert_list(
    conn: Connection, *, name: str, description: str | None, optin: str, tags: Sequence[str]
) -> int:
    now = utcnow()
    return int(
        conn.execute(
            insert(LT)
            .values(
                name=name,
                description=description,
                optin=optin,
                tags=list(tags),
                created_at=now,
                updated_at=now,
            )
            .returning(LT.c.id)
        ).scalar_one()
    )


def update_list(conn: Connection, list_id: int, **values: Any) -> None:
    conn.execute(update(LT).where(LT.c.id == list_id).values(**values, updated_at=utcnow()))


def delete_list(conn: Connection, list_id: int) -> None:
    """Delete a list and its memberships (consent records keep, ``list_id`` NULL)."""
    conn.execute(delete(MT).where(MT.c.list_id == list_id))
    conn.execute(update(CR).where(CR.c.list_id == list_id).values(list_id=None))
    conn.execute(delete(LT).where(LT.c.id == list_id))


def member_counts(conn: Connection, list_id: int) -> dict[str, int]:
    rows = conn.execute(
        select(MT.c.status, func.count()).where(MT.c.list_id == list_id).group_by(MT.c.status)
    ).all()
    return {status: n for status, n in rows}


def list_members(
    conn: Connection, list_id: int, *, status: str | None = None, batch: int = 10_000
) -> Iterable[RowMapping]:
    """Every member of a list with their contact (address order), read in batches by keyset."""
    after = ""
    while True:
        query = (
            select(
                CT.c.address,
                CT.c.address_key,
                CT.c.name,
                CT.c.attributes,
                CT.c.status.label("contact_status"),
                MT.c.status,
                MT.c.created_at,
                MT.c.updated_at,
            )
            .join(MT, MT.c.contact_id == CT.c.id)
            .where(MT.c.list_id == list_id, CT.c.address_key > after)
            .order_by(CT.c.address_key)
            .limit(batch)
        )
        if status:
            query = query.where(MT.c.status == status)
        rows = list(conn.execute(query).mappings().all())
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1]["address_key"]


# -- memberships -------------------------------------------------------------------------------


def membership(conn: Connection, contact_id: int, list_id: int) -> str | None:
    """The membership's status, or None."""
    return conn.execute(
        select(MT.c.status).where(MT.c.contact_id == contact_id, MT.c.list_id == list_id)
    ).scalar()


def set_membership(conn: Connection, contact_id: int, list_id: int, status: str) -> None:
    """Insert or change a membership's status."""
    now = utcnow()
    changed = conn.execute(
        update(MT)
        .where(MT.c.contact_id == contact_id, MT.c.list_id == list_id)
        .values(status=status, updated_at=now)
    ).rowcount
    if not changed:
        conn.execute(
            insert(MT).values(
                contact_id=contact_id,
                list_id=list_id,
                status=status,
                created_at=now,
                updated_at=now,
            )
        )


def remove_membership(conn: Connection, contact_id: int, list_id: int) -> bool:
    result = conn.execute(delete(MT).where(MT.c.contact_id == contact_id, MT.c.list_id == list_id))
    return bool(result.rowcount)


def memberships_of(conn: Connection, contact_id: int) -> list[RowMapping]:
    """The contact's memberships with the list names, by list name."""
    return list(
        conn.execute(
            select(LT.c.name.label("list"), MT.c.status, MT.c.created_at, MT.c.updated_at)
            .join(LT, LT.c.id == MT.c.list_id)
            .where(MT.c.contact_id == contact_id)
            .order_by(LT.c.name)
        )
        .mappings()
        .all()
    )


# -- consent records ---------------------------------------------------------------------------


def record_consent(
    conn: Connection,
    *,
    contact_id: int | None,
    list_id: int | None,
    action: str,
    method: str,
    source: str | None,
    consent_text: str | None = None,
    at: datetime | None = None,
) -> None:
    conn.execute(
        insert(CR).values(
            contact_id=contact_id,
            list_id=list_id,
            action=action,
            method=method,
            source=source[:SOURCE_LIMIT] if source else None,
            consent_text=consent_text,
            at=at or utcnow(),
        )
    )


def consent_records_of(conn: Connection, contact_id: int) -> list[RowMapping]:
    return list(
        conn.execute(
            select(
                CR.c.id,
                LT.c.name.label("list"),
                CR.c.action,
                CR.c.method,
                CR.c.source,
                CR.c.consent_text,
                CR.c.at,
            )
            .outerjoin(LT, LT.c.id == CR.c.list_id)
            .where(CR.c.contact_id == contact_id)
            .order_by(CR.c.at, CR.c.id)
        )
        .mappings()
        .all()
    )


# -- erased and deleted people ------------------------------------------------------------------


def mark_gone(conn: Connection, hashes: Iterable[str]) -> None:
    """Add hashes to ``erased_contacts`` (an existing one keeps its first date)."""
    rows = [{"address_hash": h, "erased_at": utcnow()} for h in hashes]
    if rows:
        conn.execute(insert_ignoring_duplicates(conn, ER, ("address_hash",)), rows)


def gone_since(conn: Connection, hashes: Sequence[str]) -> dict[str, datetime]:
    """``hash -> when`` for those of ``hashes`` in ``erased_contacts``."""
    if not hashes:
        return {}
    rows = conn.execute(
        select(ER.c.address_hash, ER.c.erased_at).where(ER.c.address_hash.in_(list(hashes)))
    ).all()
    return {h: at for h, at in rows}


# -- privacy: what is held about an address, and its anonymization ------------------------------


def deliveries_of(conn: Connection, address_key: str) -> list[RowMapping]:
    return list(
        conn.execute(
            select(
                D.c.id,
                D.c.run_id,
                D.c.row_no,
                D.c.address,
                D.c.fields,
                D.c.status,
                D.c.reason,
                D.c.attempts,
                D.c.smtp_code,
                D.c.smtp_reply,
                D.c.message_id,
                D.c.provider_message_id,
                D.c.created_at,
                D.c.sent_at,
            )
            .where(
                or_(
                    D.c.address_key == address_key,
                    # skipped rows (a duplicate's other spelling) have no key
                    D.c.address_key.is_(None) & (func.lower(func.trim(D.c.address)) == address_key),
                )
            )
            .order_by(D.c.id)
        )
        .mappings()
        .all()
    )


def events_of(conn: Connection, delivery_ids: Sequence[int]) -> list[RowMapping]:
    if not delivery_ids:
        return []
    return list(
        conn.execute(
            select(E.c.id, E.c.delivery_id, E.c.run_id, E.c.kind, E.c.detail, E.c.occurred_at)
            .where(E.c.delivery_id.in_(list(delivery_ids)))
            .order_by(E.c.occurred_at, E.c.id)
        )
        .mappings()
        .all()
    )


def inbound_of(conn: Connection, delivery_ids: Sequence[int]) -> list[RowMapping]:
    if not delivery_ids:
        return []
    return list(
        conn.execute(
            select(IM.c.id, IM.c.delivery_id, IM.c.outcome, IM.c.detail, IM.c.created_at)
            .where(IM.c.delivery_id.in_(list(delivery_ids)))
            .order_by(IM.c.id)
        )
        .mappings()
        .all()
    )


def suppression_of(conn: Connection, address_key: str) -> RowMapping | None:
    return (
        conn.execute(
            select(S.c.address_key, S.c.reason, S.c.source, S.c.created_at).where(
                S.c.address_key == address_key
            )
        )
        .mappings()
        .first()
    )


def anonymize_deliveries(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite deliveries: ``rows`` of (id, address, address_key, fields, reason, smtp_reply)."""
    for row in rows:
        conn.execute(
            update(D)
            .where(D.c.id == row["id"])
            .values(
                address=row["address"],
                address_key=row["address_key"],
                fields=row["fields"],
                reason=row["reason"],
                smtp_reply=row["smtp_reply"],
            )
        )


def rewrite_details(conn: Connection, table: str, rows: Sequence[tuple[int, Any]]) -> None:
    """Set ``detail`` of events (``table="events"``) or inbound messages by id."""
    t = E if table == "events" else IM
    for row_id, detail in rows:
        conn.execute(update(t).where(t.c.id == row_id).values(detail=detail))


def rename_contact_sends(conn: Connection, address_key: str, placeholder: str) -> None:
    """``contact_sends`` of an erased address: keyed by the placeholder instead."""
    from mailcast.ledger.models import ContactSend

    cs = cast(Table, ContactSend.__table__)
    conn.execute(update(cs).where(cs.c.address_key == address_key).values(address_key=placeholder))


def contact_sends_of(conn: Connection, address_key: str) -> list[RowMapping]:
    from mailcast.ledger.models import ContactSend

    cs = cast(Table, ContactSend.__table__)
    return list(
        conn.execute(
            select(cs.c.key, cs.c.run_id, cs.c.sent_at)
            .where(cs.c.address_key == address_key)
            .order_by(cs.c.sent_at)
        )
        .mappings()
        .all()
    )


def drop_suppression(conn: Connection, address_key: str) -> None:
    conn.execute(delete(S).where(S.c.address_key == address_key))
