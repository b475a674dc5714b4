"""Contacts and lists through the library API (``mailcast.recipients.contacts`` / ``lists``), on
SQLite and real Postgres: what a caller gets back, and the consent records left behind."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from mailcast.errors import AudienceConflictError, AudienceError, AudienceNotFoundError
from mailcast.ledger.audiences import CR
from mailcast.ledger.store import Ledger
from mailcast.recipients import contacts, lists


def unique(prefix: str = "l") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def consent(ledger: Ledger, contact_id: int | None = None) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        query = select(CR).order_by(CR.c.id)
        if contact_id is not None:
            query = query.where(CR.c.contact_id == contact_id)
        return [dict(r) for r in conn.execute(query).mappings()]


@pytest.fixture
def ledger(db_url: str) -> Ledger:
    return Ledger(db_url)


def test_add_show_edit_search_delete(ledger: Ledger) -> None:
    addr = f"{unique('Ann')}@Example.COM"
    info = contacts.add_contact(ledger, addr, name="Ann", attributes={"city": "Paris"})
    assert info.address == addr.split("@")[0] + "@example.com"
    assert info.address_key == info.address.lower()
    with pytest.raises(AudienceConflictError):
        contacts.add_contact(ledger, addr.upper())
    assert contacts.get_contact(ledger, addr.lower()).id == info.id

    merged = contacts.edit_contact(ledger, addr, attributes={"plan": "pro"})
    assert merged.attributes == {"city": "Paris", "plan": "pro"}
    replaced = contacts.edit_contact(ledger, addr, attributes={"plan": "free"}, mode="replace")
    assert replaced.attributes == {"plan": "free"}
    unset = contacts.edit_contact(ledger, addr, unset=["plan"], name="Ann B")
    assert unset.attributes == {} and unset.name == "Ann B"

    found = contacts.search_contacts(ledger, addr.split("@")[0].upper())
    assert [c.id for c in found] == [info.id]
    assert contacts.search_contacts(ledger, "ann b", limit=None)  # by name, case-insensitive

    contacts.delete_contact(ledger, addr, source="test")
    with pytest.raises(AudienceNotFoundError):
        contacts.get_contact(ledger, addr)
    records = [r for r in consent(ledger) if r["source"] == "test"]
    assert [r["action"] for r in records][-1] == "delete"
    assert records[-1]["contact_id"] is None  # outlives the contact


def test_invalid_address_says_why(ledger: Ledger) -> None:
    with pytest.raises(AudienceError) as exc:
        contacts.add_contact(ledger, "not an address")
    assert exc.value.where == "address"
    assert "not an address" in exc.value.message


def test_subscribe_confirm_unsubscribe_write_consent_records(ledger: Ledger) -> None:
    double, single = unique("double"), unique("single")
    lists.create_list(ledger, double, optin="double", description="weekly", tags=["a"])
    lists.create_list(ledger, single)
    addr = f"{unique('bob')}@example.com"

    status = contacts.subscribe(
        ledger,
        addr,
        double,
        method="form",
        source="203.0.113.7",
        consent_text="Yes, send me the news",
        attributes={"city": "Lyon"},
    )
    assert status == "unconfirmed"
    assert contacts.subscribe(ledger, addr, single, method="api", source="api") == "confirmed"
    assert contacts.confirm(ledger, addr, double, source="203.0.113.7") == "confirmed"
    assert contacts.confirm(ledger, addr, double, source="again") == "confirmed"  # no change
    assert (
        contacts.unsubscribe(ledger, addr, double, method="one_click", source="run 1")
        == "unsubscribed"
    )
    # a late click on the old confirmation link does not resubscribe
    assert contacts.confirm(ledger, addr, double, source="late") == "unsubscribed"
    info = contacts.get_contact(ledger, addr)
    assert info.lists == {double: "unsubscribed", single: "confirmed"}
    assert info.attributes == {"city": "Lyon"}

    records = consent(ledger, info.id)
    assert [(r["action"], r["method"]) for r in records] == [
        ("subscribe", "form"),
        ("subscribe", "api"),
        ("confirm", "confirmation"),
        ("unsubscribe", "one_click"),
    ]
    assert records[0]["source"] == "203.0.113.7"
    assert records[0]["consent_text"] == "Yes, send me the news"

    # the person asks again through the form: a new consent, unconfirmed on a double opt-in list
    assert contacts.subscribe(ledger, addr, double, method="form", source="x") == "unconfirmed"
    # an import never resubscribes
    contacts.unsubscribe(ledger, addr, double, method="one_click", source="run 2")
    with pytest.raises(AudienceConflictError):
        contacts.subscribe(ledger, addr, double, method="import", source="file.csv")


def test_unsubscribe_of_an_unknown_address_is_kept(ledger: Ledger) -> None:
    name = unique()
    lists.create_list(ledger, name)
    addr = f"{unique('x')}@example.com"
    assert contacts.unsubscribe(ledger, addr, name, method="one_click", source="s") == (
        "unsubscribed"
    )
    assert contacts.get_contact(ledger, addr).lists == {name: "unsubscribed"}


def test_blocklist_refuses_subscriptions(ledger: Ledger) -> None:
    name = unique()
    lists.create_list(ledger, name)
    addr = f"{unique('c')}@example.com"
    contacts.add_contact(ledger, addr)
    assert contacts.blocklist(ledger, addr, source="cli", method="cli").status == "blocklisted"
    with pytest.raises(AudienceConflictError):
        contacts.subscribe(ledger, addr, name, method="form", source="ip")
    assert contacts.unblocklist(ledger, addr).status == "enabled"
    actions = [r["action"] for r in consent(ledger, contacts.get_contact(ledger, addr).id)]
    assert actions == ["blocklist", "unblocklist"]


def test_members_with_status_and_list_lifecycle(ledger: Ledger) -> None:
    name = unique()
    lists.create_list(ledger, name, optin="double")
    a, b = f"{unique('a')}@example.com", f"{unique('b')}@example.com"
    contacts.add_contact(ledger, a, lists=[name], attributes={"city": "=cmd()"})
    contacts.add_contact(ledger, b)
    assert contacts.add_member(ledger, b, name, status="confirmed") == "confirmed"
    info = lists.get_list(ledger, name)
    assert info.members == {"unconfirmed": 1, "confirmed": 1, "unsubscribed": 0}
    assert (
        contacts.search_contacts(ledger, list_name=name, member_status="confirmed")[0].address == b
    )

    out = io.StringIO()
    assert lists.export_members(ledger, name, out) == 2
    text = out.getvalue()
    assert "'=cmd()" in text  # formula-escaped for spreadsheets
    assert text.splitlines()[0].startswith("address,name,status,contact_status")

    assert contacts.remove_member(ledger, b, name) is True
    renamed = lists.edit_list(ledger, name, new_name=name + "-2", optin="single", tags=["x"])
    assert (renamed.name, renamed.optin, renamed.tags) == (name + "-2", "single", ["x"])
    gone = lists.delete_list(ledger, name + "-2")
    assert gone.members["unconfirmed"] == 1
    with pytest.raises(AudienceNotFoundError):
        lists.get_list(ledger, name + "-2")
    assert contacts.get_contact(ledger, a).lists == {}
