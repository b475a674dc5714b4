"""Contacts: the people mailcast keeps, and their subscriptions to lists, with consent.

The library API the CLI (``mailcast contacts``, ``mailcast lists``), the web routes and a REST
API call. Every function takes ``target``: a :class:`~mailcast.ledger.store.Ledger`, a SQLAlchemy
``Engine`` or a database URL, and runs in one transaction of its own.

Addresses are checked and normalized the way campaigns check recipients
(:mod:`mailcast.recipients.validate`): the contact's ``address`` is email-validator's normalized
form, its key that lower-cased (what ``deliveries.address_key`` and the suppression list hold).

Subscriptions (what the web routes call)::

    from mailcast.recipients import contacts
    status = contacts.subscribe(ledger, "ann@example.com", "news", method="form",
                                source="203.0.113.7", consent_text="Send me the news")
    # "confirmed" on a single opt-in list, "unconfirmed" on a double opt-in one
    contacts.confirm(ledger, "ann@example.com", "news", source="203.0.113.7")  # -> "confirmed"
    contacts.unsubscribe(ledger, "ann@example.com", "news", method="one_click", source="...")

Every subscribe, confirm, unsubscribe, blocklisting, deletion (and privacy export and erasure,
:mod:`mailcast.recipients.privacy`) writes a consent record. Unsubscribing, blocklisting and
deleting are never undone by an import (:mod:`mailcast.recipients.list_import` reports them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from mailcast.errors import AudienceConflictError, AudienceError, AudienceNotFoundError
from mailcast.ledger import audiences as sql
from mailcast.ledger.models import (
    ConsentAction,
    ConsentMethod,
    ContactStatus,
    MembershipStatus,
    OptIn,
)

__all__ = [
    "ContactInfo",
    "add_contact",
    "add_member",
    "blocklist",
    "confirm",
    "delete_contact",
    "edit_contact",
    "get_contact",
    "normalize_address",
    "remove_member",
    "search_contacts",
    "subscribe",
    "unblocklist",
    "unsubscribe",
]

ATTRIBUTE_MODES = ("merge", "replace")


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """A contact as the API returns it; ``lists`` maps each list's name to the membership's
    status (``confirmed``, ``unconfirmed``, ``unsubscribed``)."""

    id: int
    address: str
    address_key: str
    name: str | None
    attributes: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    lists: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601)."""
        return {
            "id": self.id,
            "address": self.address,
            "name": self.name,
            "attributes": self.attributes,
            "status": self.status,
            "lists": self.lists,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# -- plumbing ------------------------------------------------------------------------------------


def engine_of(target: Any) -> Engine:
    """The engine of a Ledger, an Engine, or a database URL (opened, its schema checked)."""
    if isinstance(target, Engine):
        return target
    if isinstance(target, str):
        from mailcast.ledger.store import Ledger

        return Ledger(target).engine
    engine = getattr(target, "engine", None)
    if isinstance(engine, Engine):
        return engine
    raise TypeError(f"expected a Ledger, an Engine or a database URL, not {type(target)!r}")


@contextmanager
def transaction(target: Any) -> Iterator[Connection]:
    with engine_of(target).begin() as conn:
        yield conn


def normalize_address(address: str) -> tuple[str, str]:
    """``(address, key)``: the normalized address and its lower-cased key, checked as campaigns
    check recipients; AudienceError with email-validator's reason for an invalid one."""
    from mailcast.recipients.validate import _Validator

    text = (address or "").strip()
    if not text:
        raise AudienceError("missing address", where="address", hint="give an email address")
    _, normalized, key, error = _Validator(False).full(text)
    if error is not None or normalized is None or key is None:
        raise AudienceError(
            f"{text!r}: {error}", where="address", hint="give a valid email address"
        )
    return normalized, key


def _key(address: str) -> str:
    try:
        return normalize_address(address)[1]
    except AudienceError:
        return (address or "").strip().lower()  # look up what is stored, even if odd


def _info(conn: Connection, row: Mapping[Any, Any]) -> ContactInfo:
    lists = {m["list"]: m["status"] for m in sql.memberships_of(conn, row["id"])}
    return ContactInfo(
        id=row["id"],
        address=row["address"],
        address_key=row["address_key"],
        name=row["name"],
        attributes=dict(row["attributes"] or {}),
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        lists=lists,
    )


def _contact(conn: Connection, address: str) -> Mapping[Any, Any]:
    row = sql.contact_by_key(conn, _key(address))
    if row is None:
        raise AudienceNotFoundError(f"no contact {address.strip()!r}", where="address")
    return row


def _list(conn: Connection, name: str) -> Mapping[Any, Any]:
    row = sql.list_by_name(conn, name)
    if row is None:
        raise AudienceNotFoundError(
            f"no list {name!r}",
            where="list",
            hint="`mailcast lists show` lists them; `mailcast lists create NAME` makes one",
        )
    return row


def check_attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise AudienceError("attributes must be a JSON object", where="attributes")
    bad = [k for k in attributes if not isinstance(k, str) or not k]
    if bad:
        raise AudienceError(f"attribute names must be text: {bad!r}", where="attributes")
    return dict(attributes)


def _mode(mode: str) -> str:
    if mode not in ATTRIBUTE_MODES:
        raise AudienceError(
            f"unknown attributes mode {mode!r}", where="--attributes", hint="merge or replace"
        )
    return mode


def _method(method: str) -> str:
    try:
        return ConsentMethod(method).value
    except ValueError:
        raise AudienceError(
            f"unknown consent method {method!r}",
            where="method",
            hint="one of: " + ", ".join(m.value for m in ConsentMethod),
        ) from None


T = TypeVar("T")


def _with(target: Any, fn: Callable[[Connection], T]) -> T:
    with transaction(target) as conn:
        return fn(conn)


# -- contacts ------------------------------------------------------------------------------------


def add_contact(
    target: Any,
    address: str,
    *,
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    lists: tuple[str, ...] | list[str] = (),
    status: str | None = None,
    method: str = ConsentMethod.API,
    source: str | None = "api",
    consent_text: str | None = None,
) -> ContactInfo:
    """Create a contact (AudienceConflictError if the address is one already) and subscribe it
    to ``lists`` (each with a consent record; ``status`` as in :func:`add_member`, default by
    the list's opt-in). An explicit add may bring back a deleted or erased person."""
    normalized, key = normalize_address(address)
    attrs = check_attributes(attributes)
    method = _method(method)

    def run(conn: Connection) -> ContactInfo:
        if sql.contact_by_key(conn, key) is not None:
            raise AudienceConflictError(
                f"contact {normalized!r} exists already",
                where="address",
                hint="`mailcast contacts edit` changes it",
            )
        targets = [_list(conn, n) for n in lists]
        cid = sql.insert_contact(
            conn,
            address=normalized,
            address_key=key,
            name=name,
            attributes=attrs,
            status=ContactStatus.ENABLED,
        )
        for lst in targets:
            _join(conn, cid, lst, status, method, source, consent_text)
        return _info(conn, _contact(conn, normalized))

    return _with(target, run)


def get_contact(target: Any, address: str) -> ContactInfo:
    """The contact with its memberships (AudienceNotFoundError if there is none)."""
    return _with(target, lambda conn: _info(conn, _contact(conn, address)))


def edit_contact(
    target: Any,
    address: str,
    *,
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    mode: str = "merge",
    unset: tuple[str, ...] | list[str] = (),
    new_address: str | None = None,
) -> ContactInfo:
    """Change a contact: ``name`` (when given), ``attributes`` merged into the stored ones
    (``mode="merge"``) or replacing them (``"replace"``), attribute names in ``unset`` removed,
    the address changed to ``new_address`` (refused if another contact has it)."""
    attrs = check_attributes(attributes)
    _mode(mode)
    new = normalize_address(new_address) if new_address else None

    def run(conn: Connection) -> ContactInfo:
        row = _contact(conn, address)
        values: dict[str, Any] = {}
        if name is not None:
            values["name"] = name or None
        current = dict(row["attributes"] or {})
        merged = dict(attrs) if mode == "replace" else {**current, **attrs}
        for key in unset:
            merged.pop(key, None)
        if merged != current:
            values["attributes"] = merged
        if new is not None and new[1] != row["address_key"]:
            if sql.contact_by_key(conn, new[1]) is not None:
                raise AudienceConflictError(
                    f"another contact has the address {new[0]!r}", where="--address"
                )
            values["address"], values["address_key"] = new
        elif new is not None and new[0] != row["address"]:
            values["address"] = new[0]
        if values:
            sql.update_contact(conn, row["id"], **values)
        return _info(conn, _contact(conn, new[0] if new else address))

    return _with(target, run)


def delete_contact(
    target: Any, address: str, *, method: str = ConsentMethod.API, source: str | None = "api"
) -> None:
    """Delete a contact and its memberships. Recorded (a consent record, and a marker so that a
    later import reports the address instead of adding it again); ``add_contact`` or
    ``subscribe`` may bring the person back."""
    method = _method(method)

    def run(conn: Connection) -> None:
        row = _contact(conn, address)
        sql.record_consent(
            conn,
            contact_id=row["id"],
            list_id=None,
            action=ConsentAction.DELETE,
            method=method,
            source=source,
        )
        sql.delete_contact(conn, row["id"])
        sql.mark_gone(conn, [sql.deleted_hash(row["address_key"])])

    _with(target, run)


def search_contacts(
    target: Any,
    text: str | None = None,
    *,
    list_name: str | None = None,
    member_status: str | None = None,
    status: str | None = None,
    attributes: Mapping[str, str] | None = None,
    limit: int | None = 50,
    offset: int = 0,
) -> list[ContactInfo]:
    """Contacts whose address or name contains ``text`` (case-insensitive), optionally only
    members of ``list_name`` (with ``member_status``), with ``status``, and whose attributes
    equal ``attributes``; by address, at most ``limit`` (None: all) from ``offset``."""
    if member_status is not None:
        _membership_status(member_status)
    if status is not None and status not in tuple(ContactStatus):
        raise AudienceError(
            f"unknown status {status!r}", where="--status", hint="enabled or blocklisted"
        )

    def run(conn: Connection) -> list[ContactInfo]:
        list_id = _list(conn, list_name)["id"] if list_name else None
        rows = sql.search_contacts(
            conn,
            text=text,
            list_id=list_id,
            member_status=member_status,
            status=status,
            attributes=attributes,
            limit=limit,
            offset=offset,
        )
        return [_info(conn, r) for r in rows]

    return _with(target, run)


def _set_status(
    target: Any, address: str, status: ContactStatus, method: str, source: str | None
) -> ContactInfo:
    method = _method(method)

    def run(conn: Connection) -> ContactInfo:
        row = _contact(conn, address)
        if row["status"] != status:
            sql.update_contact(conn, row["id"], status=status.value)
            action = (
                ConsentAction.BLOCKLIST
                if status == ContactStatus.BLOCKLISTED
                else ConsentAction.UNBLOCKLIST
            )
            sql.record_consent(
                conn,
                contact_id=row["id"],
                list_id=None,
                action=action,
                method=method,
                source=source,
            )
        return _info(conn, _contact(conn, address))

    return _with(target, run)


def blocklist(
    target: Any, address: str, *, method: str = ConsentMethod.API, source: str | None = "api"
) -> ContactInfo:
    """Blocklist a contact: never planned, whatever its lists say; an import does not undo it."""
    return _set_status(target, address, ContactStatus.BLOCKLISTED, method, source)


def unblocklist(
    target: Any, address: str, *, method: str = ConsentMethod.API, source: str | None = "api"
) -> ContactInfo:
    """Enable a blocklisted contact again."""
    return _set_status(target, address, ContactStatus.ENABLED, method, source)


# -- memberships and consent --------------------------------------------------------------------


def _membership_status(status: str) -> MembershipStatus:
    try:
        return MembershipStatus(status)
    except ValueError:
        raise AudienceError(
            f"unknown membership status {status!r}",
            where="--status",
            hint="one of: " + ", ".join(s.value for s in MembershipStatus),
        ) from None


def initial_status(optin: str) -> MembershipStatus:
    """A new member's status on a list of this opt-in kind."""
    return MembershipStatus.UNCONFIRMED if optin == OptIn.DOUBLE else MembershipStatus.CONFIRMED


def _join(
    conn: Connection,
    contact_id: int,
    lst: Mapping[Any, Any],
    status: str | None,
    method: str,
    source: str | None,
    consent_text: str | None,
) -> MembershipStatus:
    new = _membership_status(status) if status else initial_status(lst["optin"])
    sql.set_membership(conn, contact_id, lst["id"], new)
    action = {
        MembershipStatus.CONFIRMED: ConsentAction.SUBSCRIBE,
        MembershipStatus.UNCONFIRMED: ConsentAction.SUBSCRIBE,
        MembershipStatus.UNSUBSCRIBED: ConsentAction.UNSUBSCRIBE,
    }[new]
    sql.record_consent(
        conn,
        contact_id=contact_id,
        list_id=lst["id"],
        action=action,
        method=method,
        source=source,
        consent_text=consent_text,
    )
    return new


def subscribe(
    target: Any,
    address: str,
    list_name: str,
    *,
    method: str,
    source: str | None,
    consent_text: str | None = None,
    name: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    status: str | None = None,
) -> MembershipStatus:
    """Subscribe ``address`` to ``list_name``; returns the membership's status.

    The contact is created when new (``name``, ``attributes``); for an existing one, given
    ``attributes`` are merged in and a given ``name`` replaces the stored one. A new member is
    ``confirmed`` on a single opt-in list and ``unconfirmed`` on a double opt-in one (send the
    confirmation link, then call :func:`confirm`), unless ``status`` says otherwise. A confirmed
    member stays confirmed; someone who unsubscribed is subscribed again only by their own
    request (any method but ``import``: an import never resubscribes). Always writes a consent
    record (``subscribe``, with ``method``, ``source`` — a form's IP address — and the consent
    text shown). A blocklisted contact raises AudienceConflictError and nothing is written.
    """
    normalized, key = normalize_address(address)
    attrs = check_attributes(attributes)
    method = _method(method)

    def run(conn: Connection) -> MembershipStatus:
        lst = _list(conn, list_name)
        row = sql.contact_by_key(conn, key)
        if row is None:
            cid = sql.insert_contact(
                conn,
                address=normalized,
                address_key=key,
                name=name,
                attributes=attrs,
                status=ContactStatus.ENABLED,
            )
        else:
            cid = row["id"]
            if row["status"] == ContactStatus.BLOCKLISTED:
                raise AudienceConflictError(
                    f"contact {row['address']!r} is blocklisted: not subscribed",
                    where="address",
                    hint="`mailcast contacts edit ADDRESS --unblocklist` enables it again",
                )
            values: dict[str, Any] = {}
            merged = {**dict(row["attributes"] or {}), **attrs}
            if merged != row["attributes"]:
                values["attributes"] = merged
            if name and name != row["name"]:
                values["name"] = name
            if values:
                sql.update_contact(conn, cid, **values)
        current = sql.membership(conn, cid, lst["id"])
        if current == MembershipStatus.UNSUBSCRIBED and method == ConsentMethod.IMPORT:
            raise AudienceConflictError(
                f"{normalized!r} unsubscribed from {list_name!r}: an import does not "
                "resubscribe them",
                where="address",
            )
        if current == MembershipStatus.CONFIRMED and status is None:
            sql.record_consent(
                conn,
                contact_id=cid,
                list_id=lst["id"],
                action=ConsentAction.SUBSCRIBE,
                method=method,
                source=source,
                consent_text=consent_text,
            )
            return MembershipStatus.CONFIRMED
        return _join(conn, cid, lst, status, method, source, consent_text)

    return _with(target, run)


def confirm(
    target: Any,
    address: str,
    list_name: str,
    *,
    method: str = ConsentMethod.CONFIRMATION,
    source: str | None,
    consent_text: str | None = None,
) -> MembershipStatus:
    """Confirm an unconfirmed membership (the double opt-in link was followed); returns the
    membership's status. Recorded (``confirm``) when it changes; a confirmed member stays
    confirmed (nothing written); someone who unsubscribed since stays unsubscribed (a late
    click on an old link does not resubscribe). AudienceNotFoundError when the address has no
    membership of the list."""
    method = _method(method)

    def run(conn: Connection) -> MembershipStatus:
        lst = _list(conn, list_name)
        row = _contact(conn, address)
        current = sql.membership(conn, row["id"], lst["id"])
        if current is None:
            raise AudienceNotFoundError(
                f"{row['address']!r} is not on the list {list_name!r}", where="address"
            )
        if current != MembershipStatus.UNCONFIRMED:
            return MembershipStatus(current)
        sql.set_membership(conn, row["id"], lst["id"], MembershipStatus.CONFIRMED)
        sql.record_consent(
            conn,
            contact_id=row["id"],
            list_id=lst["id"],
            action=ConsentAction.CONFIRM,
            method=method,
            source=source,
            consent_text=consent_text,
        )
        return MembershipStatus.CONFIRMED

    return _with(target, run)


def unsubscribe(
    target: Any,
    address: str,
    list_name: str,
    *,
    method: str,
    source: str | None,
    consent_text: str | None = None,
) -> MembershipStatus:
    """Unsubscribe ``address`` from ``list_name`` (returns ``unsubscribed``). Always recorded
    (``unsubscribe``); an address that is not a contact or not a member yet gets an
    ``unsubscribed`` membership all the same, so that no later import subscribes it. Other
    lists' memberships are unchanged."""
    normalized, key = normalize_address(address)
    method = _method(method)

    def run(conn: Connection) -> MembershipStatus:
        lst = _list(conn, list_name)
        row = sql.contact_by_key(conn, key)
        if row is None:
            cid = sql.insert_contact(
                conn,
                address=normalized,
                address_key=key,
                name=None,
                attributes={},
                status=ContactStatus.ENABLED,
            )
        else:
            cid = row["id"]
        sql.set_membership(conn, cid, lst["id"], MembershipStatus.UNSUBSCRIBED)
        sql.record_consent(
            conn,
            contact_id=cid,
            list_id=lst["id"],
            action=ConsentAction.UNSUBSCRIBE,
            method=method,
            source=source,
            consent_text=consent_text,
        )
        return MembershipStatus.UNSUBSCRIBED

    return _with(target, run)


def add_member(
    target: Any,
    address: str,
    list_name: str,
    *,
    status: str | None = None,
    method: str = ConsentMethod.API,
    source: str | None = "api",
    consent_text: str | None = None,
) -> MembershipStatus:
    """Put an existing contact on a list with ``status`` (default: by the list's opt-in), or
    change its status there: an operator's act, recorded like a subscription (or an
    unsubscription for ``unsubscribed``)."""
    method = _method(method)
    if status is not None:
        _membership_status(status)

    def run(conn: Connection) -> MembershipStatus:
        lst = _list(conn, list_name)
        row = _contact(conn, address)
        return _join(conn, row["id"], lst, status, method, source, consent_text)

    return _with(target, run)


def remove_member(
    target: Any,
    address: str,
    list_name: str,
    *,
    method: str = ConsentMethod.API,
    source: str | None = "api",
) -> bool:
    """Take a contact off a list (the membership is deleted, an ``unsubscribe`` consent record
    written; unlike :func:`unsubscribe` a later import may add them again). Returns whether
    they were on it."""
    method = _method(method)

    def run(conn: Connection) -> bool:
        lst = _list(conn, list_name)
        row = _contact(conn, address)
        removed = sql.remove_membership(conn, row["id"], lst["id"])
        if removed:
            sql.record_consent(
                conn,
                contact_id=row["id"],
                list_id=lst["id"],
                action=ConsentAction.UNSUBSCRIBE,
                method=method,
                source=source,
            )
        return removed

    return _with(target, run)
