"""Test data for audiences, written straight through the models (contacts, lists, memberships,
runs with sent deliveries and their events): what the contacts API would write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table, insert, select

from mailcast.ledger.models import (
    Contact,
    DeliveryStatus,
    Event,
    MailingList,
    Membership,
)
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.ledger_rows import claim_pending

CT = cast(Table, Contact.__table__)
LT = cast(Table, MailingList.__table__)
MT = cast(Table, Membership.__table__)
ET = cast(Table, Event.__table__)


def tag() -> str:
    return uuid.uuid4().hex[:10]


def add_contacts(engine: Engine, rows: list[dict[str, Any]]) -> dict[str, int]:
    """rows: {"address", "name"?, "attributes"?, "status"?, "created_at"?} → address → id."""
    now = datetime.now(UTC)
    values = [
        {
            "address": r["address"],
            "address_key": r["address"].lower(),
            "name": r.get("name"),
            "attributes": r.get("attributes", {}),
            "status": r.get("status", "enabled"),
            "created_at": r.get("created_at", now),
            "updated_at": now,
        }
        for r in rows
    ]
    with engine.begin() as conn:
        conn.execute(insert(CT), values)
        found = conn.execute(
            select(CT.c.address, CT.c.id).where(CT.c.address.in_([r["address"] for r in rows]))
        ).all()
    return {a: i for a, i in found}


def add_list(engine: Engine, name: str, optin: str = "single") -> int:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(LT)
                .values(name=name, optin=optin, tags=[], created_at=now, updated_at=now)
                .returning(LT.c.id)
            ).scalar_one()
        )


def add_members(engine: Engine, list_id: int, members: dict[int, str]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(MT),
            [
                {
                    "contact_id": c,
                    "list_id": list_id,
                    "status": s,
                    "created_at": now,
                    "updated_at": now,
                }
                for c, s in members.items()
            ],
        )


def sent_run(
    ledger: Ledger,
    campaign: str,
    addresses: list[str],
    *,
    dry_run: bool = False,
    spec: dict[str, Any] | None = None,
    events: dict[str, list[tuple[str, timedelta]]] | None = None,
    status: DeliveryStatus = DeliveryStatus.SENT,
) -> str:
    """A run of ``campaign`` whose rows were all sent (or ``status``); ``events``: address →
    [(kind, how long ago)]. Returns the run id."""
    run_id = ledger.create_run(campaign, spec or {}, dry_run=dry_run, transport=None)
    ledger.plan(
        run_id,
        [Recipient(i + 2, a, {"email": a}, None, a.lower()) for i, a in enumerate(addresses)],
        ["email"],
    )
    claims = claim_pending(ledger, run_id, len(addresses) + 1)
    ledger.record([Outcome(c.id, status) for c in claims])
    ledger.set_run(run_id, status="completed")
    ids = {c.address: c.id for c in claims}
    now = datetime.now(UTC)
    rows = [
        {"delivery_id": ids[a], "run_id": run_id, "kind": kind, "detail": {},
         "occurred_at": now - ago, "created_at": now}
        for a, happened in (events or {}).items()
        for kind, ago in happened
    ]  # fmt: skip
    if rows:
        with ledger.engine.begin() as conn:
            conn.execute(insert(ET), rows)
    return run_id
