"""The tracking service's and the bounce processor's statements against the ledger: links,
deliveries and events. Bulk where there is more than one row; every statement works on SQLite
and Postgres."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, exists, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite

from mailcast.ledger.models import Campaign, Delivery, Event, Link, Run, utcnow

C = cast(Table, Campaign.__table__)
D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
L = cast(Table, Link.__table__)
R = cast(Table, Run.__table__)


def insert_ignoring_duplicates(conn: Connection, table: Table, index: Sequence[str]) -> Any:
    """``INSERT … ON CONFLICT (index) DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=list(index))
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=list(index))
    raise ValueError(f"unsupported database {conn.dialect.name!r}")  # pragma: no cover


def url_hash(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()


# -- links ------------------------------------------------------------------------------------


def register_links(engine: Engine, run_id: str, links: Sequence[tuple[str, int]]) -> dict[str, int]:
    """``url -> links.id`` for the (url, position) pairs of a run, inserting the new ones: one
    insert and one select, whatever the number of links."""
    if not links:
        return {}
    first: dict[str, int] = {}
    for url, position in links:
        first.setdefault(url, position)
    hashes = {url_hash(u): u for u in first}
    now = utcnow()
    rows = [
        {"run_id": run_id, "position": p, "url": u, "url_hash": url_hash(u), "created_at": now}
        for u, p in first.items()
    ]
    with engine.begin() as conn:
        conn.execute(insert_ignoring_duplicates(conn, L, ("run_id", "url_hash")), rows)
        found = conn.execute(
            select(L.c.url_hash, L.c.id).where(L.c.run_id == run_id, L.c.url_hash.in_(list(hashes)))
        ).all()
    return {hashes[h]: i for h, i in found}


def link_target(engine: Engine, delivery_id: int, link_id: int) -> tuple[str, str, int] | None:
    """(url, run_id, position) of link ``link_id`` when it belongs to the run of delivery
    ``delivery_id``; else None."""
    query = (
        select(L.c.url, L.c.run_id, L.c.position)
        .join(D, D.c.run_id == L.c.run_id)
        .where(L.c.id == link_id, D.c.id == delivery_id)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return (row[0], row[1], row[2]) if row is not None else None


# -- deliveries -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    id: int
    run_id: str
    address: str
    address_key: str | None
    campaign: str


def delivery(engine: Engine, delivery_id: int) -> DeliveryInfo | None:
    query = (
        select(D.c.id, D.c.run_id, D.c.address, D.c.address_key, C.c.name)
        .join(R, R.c.id == D.c.run_id)
        .join(C, C.c.id == R.c.campaign_id)
        .where(D.c.id == delivery_id)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return DeliveryInfo(*row) if row is not None else None


# -- events -----------------------------------------------------------------------------------


def record_event(
    engine: Engine,
    delivery_id: int,
    kind: str,
    detail: dict[str, Any] | None,
    *,
    occurred_at: datetime | None = None,
) -> bool:
    """One event for a delivery (its ``run_id`` taken from the delivery, in the same statement).
    False when there is no such delivery."""
    now = utcnow()
    stmt = insert(E).from_select(
        ["delivery_id", "run_id", "kind", "detail", "occurred_at", "created_at"],
        select(
            D.c.id,
            D.c.run_id,
            literal(kind),
            literal(detail, type_=E.c.detail.type),
            literal(occurred_at or now, type_=E.c.occurred_at.type),
            literal(now, type_=E.c.created_at.type),
        ).where(D.c.id == delivery_id),
    )
    with engine.begin() as conn:
        return bool(conn.execute(stmt).rowcount)


# Rows per INSERT statement of a batch: 6 bound values a row, well under SQLite's (32,766) and
# Postgres' (65,535) limits on the parameters of one statement.
BATCH_ROWS = 1000


def record_event_batch(
    engine: Engine, batch: Sequence[tuple[int, str, dict[str, Any] | None, datetime]]
) -> int:
    """Write queued opens and clicks, ``(delivery_id, kind, detail, occurred_at)`` each, in one
    transaction: one SELECT of the deliveries' runs, then one multi-row INSERT per
    :data:`BATCH_ROWS` events. Each row is the one :func:`record_event` writes for the same
    event; an event of a delivery that does not exist is left out, as there. Returns how many
    were written."""
    if not batch:
        return 0
    ids = sorted({item[0] for item in batch})
    now = utcnow()
    with engine.begin() as conn:
        runs: dict[int, str] = {}
        for start in range(0, len(ids), BATCH_ROWS):
            part = ids[start : start + BATCH_ROWS]
            runs.update(
                (int(i), str(r))
                for i, r in conn.execute(select(D.c.id, D.c.run_id).where(D.c.id.in_(part)))
            )
        rows = [
            {
                "delivery_id": delivery_id,
                "run_id": runs[delivery_id],
                "kind": kind,
                "detail": detail,
                "occurred_at": occurred_at,
                "created_at": now,
            }
            for delivery_id, kind, detail, occurred_at in batch
            if delivery_id in runs
        ]
        for start in range(0, len(rows), BATCH_ROWS):
            conn.execute(insert(E).values(rows[start : start + BATCH_ROWS]))
    return len(rows)


def record_events(conn: Connection, events: Iterable[dict[str, Any]]) -> int:
    """Insert events (dicts with delivery_id, run_id, kind, detail, occurred_at) in one
    statement; returns how many."""
    now = utcnow()
    rows = [{**e, "created_at": now} for e in events]
    if rows:
        conn.execute(insert(E), rows)
    return len(rows)


def has_event(conn: Connection, delivery_id: int, kind: str) -> bool:
    """Whether the delivery has an event of ``kind`` already."""
    query = select(exists().where(and_(E.c.delivery_id == delivery_id, E.c.kind == kind)))
    return bool(conn.execute(query).scalar())
