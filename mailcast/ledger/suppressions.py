"""The suppression list's statements: add (first reason wins), remove, list, count."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, delete, func, select

from mailcast.ledger.events import insert_ignoring_duplicates
from mailcast.ledger.models import Suppression, utcnow

S = cast(Table, Suppression.__table__)


@dataclass(frozen=True, slots=True)
class Entry:
    address_key: str
    reason: str
    source: str | None
    created_at: datetime


def suppress_rows(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Add (address_key, reason, source, delivery_id) rows to the suppression list; an address
    already on it keeps its first reason. Returns how many were new."""
    now = utcnow()
    unique: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("address_key"):
            unique.setdefault(
                r["address_key"],
                {
                    "address_key": r["address_key"],
                    "reason": r["reason"],
                    "source": (r.get("source") or None) and str(r["source"])[:200],
                    "delivery_id": r.get("delivery_id"),
                    "created_at": now,
                },
            )
    if not unique:
        return 0
    stmt = insert_ignoring_duplicates(conn, S, ("address_key",)).returning(S.c.id)
    return len(conn.execute(stmt, list(unique.values())).all())


def remove_keys(engine: Engine, keys: Sequence[str]) -> int:
    """Take address keys off the list; returns how many were on it."""
    with engine.begin() as conn:
        result = conn.execute(delete(S).where(S.c.address_key.in_(list(keys))))
    return result.rowcount or 0


def entries(engine: Engine, *, reason: str | None = None, limit: int | None = None) -> list[Entry]:
    """The list, newest first (only ``reason``'s entries, at most ``limit``, when given)."""
    query = select(S.c.address_key, S.c.reason, S.c.source, S.c.created_at).order_by(
        S.c.created_at.desc(), S.c.address_key
    )
    if reason:
        query = query.where(S.c.reason == reason)
    if limit:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [Entry(*row) for row in conn.execute(query).all()]


def counts(engine: Engine) -> dict[str, int]:
    """``reason -> how many addresses``."""
    with engine.connect() as conn:
        rows = conn.execute(select(S.c.reason, func.count()).group_by(S.c.reason)).all()
    return {r: n for r, n in rows}


def suppressed(engine: Engine) -> dict[str, str]:
    """``address_key -> reason`` for every suppressed address (what validate needs)."""
    with engine.connect() as conn:
        return {k: r for k, r in conn.execute(select(S.c.address_key, S.c.reason)).all()}
