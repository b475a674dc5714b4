"""mailcast.recipients.validate: normalized addresses, reasons, required fields, suppression, the caches."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcast.errors import SpecError
from mailcast.recipients import Recipient, RecipientTable
from mailcast.recipients.validate import (
    reason_category,
    summarize,
    validate_recipients,
)


def table_of(
    *addresses: str, columns: tuple[str, ...] = ("email",), **extra: list[str]
) -> RecipientTable:
    rows = []
    for i, address in enumerate(addresses):
        fields = {"email": address}
        for name, values in extra.items():
            fields[name] = values[i]
        rows.append(Recipient(row=i + 2, address=address, fields=fields))
    return RecipientTable(source="t.csv", columns=[*columns, *extra], rows=rows)


def direct(address: str) -> tuple[str | None, str | None, str | None]:
    """What validate_recipients must produce for one address, without any cache."""
    address = address.strip()
    if not address:
        return (None, None, "missing address")
    try:
        normalized = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        return (None, None, f"invalid address: {exc}")
    return (normalized, normalized.lower(), None)


def test_valid_addresses_are_normalized() -> None:
    table = table_of(
        "Ann@Example.COM", "  bob@example.org ", "Zoë@exämple.com", "Dan@XN--EXMPLE-CUA.com"
    )
    result = validate_recipients(table)
    assert result is table
    assert [r.address for r in table.rows] == [
        "Ann@example.com",
        "bob@example.org",
        "Zoë@exämple.com",
        "Dan@exämple.com",
    ]
    assert [r.key for r in table.rows] == [
        "ann@example.com",
        "bob@example.org",
        "zoë@exämple.com",
        "dan@exämple.com",
    ]
    assert all(r.reason is None for r in table.rows)
    assert table.rows[0].fields["email"] == "Ann@Example.COM"  # fields keep the source's value


def test_role_addresses_are_lower_cased_like_email_validator() -> None:
    table = validate_recipients(table_of("Postmaster@Example.com", "Info@Example.com"))
    assert [r.address for r in table.rows] == ["postmaster@example.com", "info@example.com"]


def test_invalid_and_missing_addresses() -> None:
    table = validate_recipients(
        table_of("", "   ", "not-an-address", "a@localhost", "a@b@c.com", "x@example.invalid")
    )
    reasons = [r.reason for r in table.rows]
    assert reasons[0] == reasons[1] == "missing address"
    assert reasons[2] == "invalid address: An email address must have an @-sign."
    assert reasons[3] is not None and reasons[3].startswith("invalid address: ")
    assert "period" in reasons[3]
    assert reasons[4] is not None and reasons[4].startswith("invalid address: ")
    assert reasons[5] is not None and "special-use or reserved" in reasons[5]
    assert all(r.key is None for r in table.rows)


def test_rows_already_rejected_are_untouched() -> None:
    table = table_of("not-an-address", "Ann@Example.com")
    table.rows[0].reason = "row has 4 fields, header has 3"
    table.rows[1].reason = "row has 4 fields, header has 3"
    validate_recipients(table)
    assert [r.reason for r in table.rows] == ["row has 4 fields, header has 3"] * 2
    assert table.rows[1].address == "Ann@Example.com" and table.rows[1].key is None


def test_required_fields() -> None:
    table = table_of(
        "a@example.com", "b@example.com", "c@example.com", "bad",
        name=["Ann", "  ", "", ""], city=["Paris", "Oslo", "", ""],
    )  # fmt: skip
    validate_recipients(table, required=["name", "city"])
    assert [r.reason for r in table.rows] == [
        None,
        "missing field: name",
        "missing field: name, city",
        "invalid address: An email address must have an @-sign.",
    ]
    assert table.rows[1].key == "b@example.com"


def test_required_column_that_does_not_exist() -> None:
    with pytest.raises(SpecError) as info:
        validate_recipients(table_of("a@example.com"), required=["phone"])
    assert info.value.where == "recipients.required_columns"
    assert "'phone'" in str(info.value) and "'email'" in str(info.value)


def test_suppressed() -> None:
    table = table_of(
        "Ann@Example.com",
        "bob@example.com",
        "carol@example.com",
        "dave@example.com",
        name=["A", "B", "", "D"],
    )
    validate_recipients(
        table, required=["name"], suppressed={"ann@example.com", "carol@example.com", "other@x.org"}
    )
    assert [r.reason for r in table.rows] == ["suppressed", None, "missing field: name", None]
    assert table.rows[0].key == "ann@example.com"


def test_suppressed_accepts_frozenset_and_list() -> None:
    for suppressed in (frozenset({"a@example.com"}), ["a@example.com"]):
        table = validate_recipients(table_of("A@example.com"), suppressed=suppressed)
        assert table.rows[0].reason == "suppressed"


ADDRESSES = [
    "Ann@Example.com",
    "ann@example.com",
    "ANN@EXAMPLE.COM",
    "Ann@Example.com",
    "postmaster@example.com",
    "POSTMASTER@example.com",
    "a@localhost",
    "A@LOCALHOST",
    "x@example.invalid",
    "X@Example.Invalid",
    '"quoted"@example.com',
    "Zoë@exämple.com",
    "ZOË@EXÄMPLE.COM",
    "a@xn--exmple-cua.com",
    "b@XN--EXMPLE-CUA.COM",
    "ab@sub.EXAMPLE.org",
    "a..b@example.org",
    ".a@example.org",
    "a@-example.org",
    "a@example..org",
    "a@example.org.",
    "a@1.2.3.4",
    "a@[1.2.3.4]",
    "a" * 64 + "@example.org",
    "a" * 65 + "@example.org",
    "a@" + "b" * 63 + ".org",
    "a@" + "b" * 64 + ".org",
    "x" * 60 + "@" + ("d" * 60 + ".") * 3 + "com",
    "İ@example.com",
    "i̇@example.com",
    "user+tag@example.com",
    "user@example.com ",
    "",
]


def test_caches_do_not_change_results() -> None:
    table = validate_recipients(table_of(*ADDRESSES))
    for address, r in zip(ADDRESSES, table.rows, strict=True):
        assert (r.address if r.reason is None else None, r.key, r.reason) == direct(address), (
            address
        )


local_part = st.text(alphabet=st.sampled_from(list("aAbBzZ09.+-_'!#~\"é ")), min_size=0, max_size=8)
domain = st.sampled_from(
    ["example.com", "EXAMPLE.com", "Example.Org", "localhost", "example.invalid", "a.b", "x-.com",
     "exämple.com", "xn--exmple-cua.com", "1.2.3.4", "test", "sub.example.co.uk", ""]
)  # fmt: skip


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.tuples(local_part, domain), min_size=1, max_size=30))
def test_caches_match_email_validator(pairs: list[tuple[str, str]]) -> None:
    addresses = [f"{local}@{dom}" for local, dom in pairs]
    table = validate_recipients(table_of(*addresses))
    for address, r in zip(addresses, table.rows, strict=True):
        assert (r.address if r.reason is None else None, r.key, r.reason) == direct(address), (
            address
        )


def test_summarize() -> None:
    table = table_of(
        "a@example.com", "bad", "", "b@example.com", "c@example.com", name=["x", "x", "x", "x", ""]
    )
    validate_recipients(table, required=["name"], suppressed={"b@example.com"})
    table.rows.append(
        Recipient(row=9, address="a@example.com", fields={}, reason="duplicate of row 2")
    )
    table.rows.append(
        Recipient(row=10, address="z", fields={}, reason="row has 3 fields, header has 2")
    )
    assert summarize(table) == {
        "ok": 1,
        "invalid address": 1,
        "missing address": 1,
        "suppressed": 1,
        "missing field": 1,
        "duplicate": 1,
        "wrong number of fields": 1,
    }
    assert summarize(RecipientTable(source="x", columns=[])) == {"ok": 0}
    assert reason_category(None) == "ok"
    assert reason_category("invalid address: nope: really") == "invalid address"


def test_validate_recipients_with_required_and_suppressed() -> None:
    table = validate_recipients(
        table_of("A@Example.com"), required=["email"], suppressed={"x@y.org"}
    )
    assert table.rows[0].address == "A@example.com"
