"""The public forms' statements (``mailcast serve``: /s/LIST, its confirmation link, /p/TOKEN,
and the one-click unsubscribe of a list campaign): a list by name, a contact's lists, and the
membership changes with their consent records. Each change and its consent record are written
in one transaction, on SQLite and Postgres."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, func, insert, select, update

from mailcast.ledger.events import insert_ignoring_duplicates
from mailcast.ledger.models import (
    FAILED,
    PENDING,
    SENDING,
    UNKNOWN,
    ConsentAction,
    ConsentRecord,
    Contact,
    ContactStatus,
    Delivery,
    MailingList,
    Membership,
    MembershipStatus,
    Run,
    Suppression,
    utcnow,
)

CO = cast(Table, Contact.__table__)
LI = cast(Table, MailingList.__table__)
ME = cast(Table, Membership.__table__)
CR = cast(Table, ConsentRecord.__table__)
D = cast(Table, Delivery.__table__)
R = cast(Table, Run.__table__)
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


@dataclass(frozen=True, slots=True)
class Change:
    """What a subscription, confirmation or unsubscription did: the contact, the membership's
    status before (None: there was none) and after."""

    contact_id: int
    before: str | None
    after: str | None


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


def membership_status(engine: Engine, contact_id: int, list_id: int) -> str | None:
    query = select(ME.c.status).where(ME.c.contact_id == contact_id, ME.c.list_id == list_id)
    with engine.connect() as conn:
        return cast(str | None, conn.execute(query).scalar())


def _record(
    conn: Connection,
    contact_id: int,
    list_id: int,
    action: ConsentAction,
    method: str,
    source: str | None,
    consent_text: str | None,
) -> None:
    conn.execute(
        insert(CR).values(
            contact_id=contact_id,
            list_id=list_id,
            action=action,
            method=method,
            source=(source or None) and source[:500],
            consent_text=consent_text,
            at=utcnow(),
        )
    )


def _status(conn: Connection, contact_id: int, list_id: int) -> str | None:
    query = select(ME.c.status).where(ME.c.contact_id == contact_id, ME.c.list_id == list_id)
    return cast(str | None, conn.execute(query.with_for_update()).scalar())


def _set_status(conn: Connection, contact_id: int, list_id: int, status: str) -> None:
    conn.execute(
        update(ME)
        .where(ME.c.contact_id == contact_id, ME.c.list_id == list_id)
        .values(status=status, updated_at=utcnow())
    )


def subscribe(
    engine: Engine,
    list_id: int,
    address: str,
    address_key: str,
    name: str | None,
    *,
    confirmed: bool,
    method: str,
    source: str | None,
    consent_text: str | None,
) -> Change | None:
    """Subscribe an address (validated, normalized; ``address_key`` lower-cased) to a list: the
    contact is created when new (its name set when it had none); the membership becomes
    ``confirmed`` (or ``unconfirmed`` when not ``confirmed``), a confirmed member stays
    confirmed. A ``subscribe`` consent record either way. None when the contact is
    blocklisted (nothing changes)."""
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert_ignoring_duplicates(conn, CO, ("address_key",)),
            [
                {
                    "address": address,
                    "address_key": address_key,
                    "name": name or None,
                    "attributes": {},
                    "status": ContactStatus.ENABLED,
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        row = conn.execute(
            select(CO.c.id, CO.c.name, CO.c.status).where(CO.c.address_key == address_key)
        ).one()
        if row.status == ContactStatus.BLOCKLISTED:
            return None
        contact_id = int(row.id)
        if name and not row.name:
            conn.execute(update(CO).where(CO.c.id == contact_id).values(name=name, updated_at=now))
        wanted = MembershipStatus.CONFIRMED if confirmed else MembershipStatus.UNCONFIRMED
        made = conn.execute(
            insert_ignoring_duplicates(conn, ME, ("contact_id", "list_id"))
            .values(
                contact_id=contact_id, list_id=list_id, status=wanted, created_at=now,
                updated_at=now,
            )
            .returning(ME.c.contact_id)
        ).all()  # fmt: skip
        before = None if made else _status(conn, contact_id, list_id)
        after: str = wanted
        if before == MembershipStatus.CONFIRMED:
            after = MembershipStatus.CONFIRMED
        elif before is not None:
            _set_status(conn, contact_id, list_id, after)
        _record(conn, contact_id, list_id, ConsentAction.SUBSCRIBE, method, source, consent_text)
    return Change(contact_id, before, after)


def confirm(
    engine: Engine, contact_id: int, list_id: int, *, method: str, source: str | None
) -> Change | None:
    """An unconfirmed membership becomes confirmed (a ``confirm`` consent record). A confirmed
    one is left as it is, and so is one that was unsubscribed since (an old link never
    resubscribes anyone): no record. None when there is no such membership."""
    with engine.begin() as conn:
        before = _status(conn, contact_id, list_id)
        if before is None:
            return None
        if before != MembershipStatus.UNCONFIRMED:
            return Change(contact_id, before, before)
        _set_status(conn, contact_id, list_id, MembershipStatus.CONFIRMED)
        _record(conn, contact_id, list_id, ConsentAction.CONFIRM, method, source, None)
    return Change(contact_id, before, MembershipStatus.CONFIRMED)


def unsubscribe(
    engine: Engine, contact_id: int, list_id: int, *, method: str, source: str | None
) -> Change | None:
    """The membership becomes ``unsubscribed`` (an ``unsubscribe`` consent record, once: an
    unsubscribed member is left as is). None when there is no such membership."""
    with engine.begin() as conn:
        before = _status(conn, contact_id, list_id)
        if before is None:
            return None
        if before == MembershipStatus.UNSUBSCRIBED:
            return Change(contact_id, before, before)
        _set_status(conn, contact_id, list_id, MembershipStatus.UNSUBSCRIBED)
        _record(conn, contact_id, list_id, ConsentAction.UNSUBSCRIBE, method, source, None)
    return Change(contact_id, before, MembershipStatus.UNSUBSCRIBED)


def consent_records(engine: Engine, contact_id: int) -> list[dict[str, Any]]:
    """A contact's consent records, oldest first."""
    query = select(CR).where(CR.c.contact_id == contact_id).order_by(CR.c.at, CR.c.id)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings().all()]


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


def members_count(engine: Engine, list_id: int, status: str) -> int:
    query = select(func.count()).where(ME.c.list_id == list_id, ME.c.status == status)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())
