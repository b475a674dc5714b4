"""What the public forms of ``mailcast serve`` read (/s/LIST, its confirmation link, /p/TOKEN,
the one-click unsubscribe of a list campaign) beside the contacts API
(:mod:`mailcast.recipients.contacts`, whose statements are in ``audiences.py`` and which writes
every membership change with its consent record): a list by name or id without its member
counts, a contact by id, a contact's lists with their descriptions, what a delivery was sent to,
and closing the row of a confirmation message the send engine left open."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, select, update

from mailcast.ledger.models import (
    FAILED,
    PENDING,
    SENDING,
    SENT,
    UNKNOWN,
    Campaign,
    Contact,
    Delivery,
    MailingList,
    Membership,
    Run,
    RunStatus,
    Suppression,
    utcnow,
)

CO = cast(Table, Contact.__table__)
LI = cast(Table, MailingList.__table__)
ME = cast(Table, Membership.__table__)
D = cast(Table, Delivery.__table__)
R = cast(Table, Run.__table__)
C = cast(Table, Campaign.__table__)
S = cast(Table, Suppression.__table__)


@dataclass(frozen=True, slots=True)
class ListInfo:
    id: int
    name: str
    description: str | None
    optin: str


@dataclass(frozen=True, slots=True)
class ContactInfo:
    id: int
    address: str
    address_key: str
    name: str | None
    status: str


@dataclass(frozen=True, slots=True)
class MembershipInfo:
    list_id: int
    list_name: str
    description: str | None
    status: str


def _list_row(row: Any) -> ListInfo | None:
    return ListInfo(row.id, row.name, row.description, row.optin) if row is not None else None


def find_list(engine: Engine, name: str) -> ListInfo | None:
    query = select(LI.c.id, LI.c.name, LI.c.description, LI.c.optin).where(LI.c.name == name)
    with engine.connect() as conn:
        return _list_row(conn.execute(query).first())


def list_by_id(engine: Engine, list_id: int) -> ListInfo | None:
    query = select(LI.c.id, LI.c.name, LI.c.description, LI.c.optin).where(LI.c.id == list_id)
    with engine.connect() as conn:
        return _list_row(conn.execute(query).first())


def contact_by_key(engine: Engine, address_key: str) -> ContactInfo | None:
    query = select(CO.c.id, CO.c.address, CO.c.address_key, CO.c.name, CO.c.status).where(
        CO.c.address_key == address_key
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return ContactInfo(*row) if row is not None else None


def contact_by_id(engine: Engine, contact_id: int) -> ContactInfo | None:
    query = select(CO.c.id, CO.c.address, CO.c.address_key, CO.c.name, CO.c.status).where(
        CO.c.id == contact_id
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return ContactInfo(*row) if row is not None else None


def memberships(engine: Engine, contact_id: int) -> list[MembershipInfo]:
    """The lists a contact is (or was) on, by list name."""
    query = (
        select(LI.c.id, LI.c.name, LI.c.description, ME.c.status)
        .join(ME, ME.c.list_id == LI.c.id)
        .where(ME.c.contact_id == contact_id)
        .order_by(LI.c.name)
    )
    with engine.connect() as conn:
        return [MembershipInfo(*row) for row in conn.execute(query).all()]


def delivery_audience(engine: Engine, delivery_id: int) -> tuple[str | None, dict[str, Any]] | None:
    """(address key, the run's ``recipients`` spec) of a delivery; None when there is none."""
    query = select(D.c.address_key, D.c.address, R.c.spec).join(R, R.c.id == D.c.run_id)
    with engine.connect() as conn:
        row = conn.execute(query.where(D.c.id == delivery_id)).first()
    if row is None:
        return None
    key = row.address_key or (row.address.lower() if row.address else None)
    spec = row.spec if isinstance(row.spec, dict) else {}
    recipients = spec.get("recipients")
    return key, recipients if isinstance(recipients, dict) else {}


def suppressed_reason(engine: Engine, address_key: str) -> str | None:
    """Why an address is on the suppression list; None when it is not."""
    query = select(S.c.reason).where(S.c.address_key == address_key)
    with engine.connect() as conn:
        return cast(str | None, conn.execute(query).scalar())


def confirmation_sent_since(
    engine: Engine, campaign: str, address_key: str, since: datetime
) -> bool:
    """Whether a confirmation message (a row of a run of ``campaign``) went to the address
    since ``since`` (sent, or still on its way)."""
    query = (
        select(D.c.id)
        .join(R, R.c.id == D.c.run_id)
        .join(C, C.c.id == R.c.campaign_id)
        .where(
            D.c.address_key == address_key,
            C.c.name == campaign,
            D.c.created_at >= since,
            D.c.status.in_([PENDING, SENDING, SENT]),
        )
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).first() is not None


def unfinished_runs(engine: Engine, campaign_prefix: str, before: datetime) -> list[str]:
    """Runs of the campaigns named ``campaign_prefix…`` still planning or sending that were
    created before ``before`` (their sender stopped)."""
    query = (
        select(R.c.id)
        .join(C, C.c.id == R.c.campaign_id)
        .where(
            C.c.name.startswith(campaign_prefix, autoescape=True),
            R.c.status.in_([RunStatus.PLANNING, RunStatus.SENDING]),
            R.c.created_at < before,
        )
        .order_by(R.c.created_at)
    )
    with engine.connect() as conn:
        return [str(r) for r in conn.execute(query).scalars().all()]


def fail_open_rows(engine: Engine, run_id: str, reason: str) -> int:
    """The rows of a run the send engine left open: ``pending`` (and ``sending`` rows only
    reserved) become ``failed`` with ``reason``; a ``sending`` row handed over (its message
    may have left) becomes ``unknown``. Returns how many changed."""
    now = utcnow()
    with engine.begin() as conn:
        failed = conn.execute(
            update(D)
            .where(
                D.c.run_id == run_id,
                (D.c.status == PENDING) | ((D.c.status == SENDING) & D.c.handed_at.is_(None)),
            )
            .values(status=FAILED, reason=reason, updated_at=now, claim_token=None)
        ).rowcount
        unknown = conn.execute(
            update(D)
            .where(D.c.run_id == run_id, D.c.status == SENDING)
            .values(status=UNKNOWN, reason="in flight when the send stopped", updated_at=now)
        ).rowcount
    return (failed or 0) + (unknown or 0)
