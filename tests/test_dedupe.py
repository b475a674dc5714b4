"""mailcast.recipients.dedupe: the first row of an address is kept, later ones are marked duplicates."""

from __future__ import annotations

from pathlib import Path

from mailcast.recipients import Recipient, RecipientTable
from mailcast.recipients.dedupe import dedupe_recipients
from mailcast.recipients.sources import read_recipients
from mailcast.recipients.validate import summarize, validate_recipients
from mailcast.spec import RecipientSource


def rows(*specs: tuple[int, str, str | None]) -> RecipientTable:
    return RecipientTable(
        source="t.csv",
        columns=["email"],
        rows=[Recipient(row=n, address=a, fields={"email": a}, key=k) for n, a, k in specs],
    )


def test_keeps_first_and_names_it() -> None:
    table = rows(
        (2, "Ann@example.com", "ann@example.com"),
        (3, "bob@example.com", "bob@example.com"),
        (5, "ANN@example.com", "ann@example.com"),
        (9, "ann@example.com", "ann@example.com"),
    )
    assert dedupe_recipients(table) is table
    assert [r.reason for r in table.rows] == [
        None,
        None,
        "duplicate of row 2",
        "duplicate of row 2",
    ]


def test_rejected_rows_are_untouched_and_do_not_count() -> None:
    table = rows(
        (2, "a@example.com", "a@example.com"),
        (3, "a@example.com", "a@example.com"),
        (4, "b@example.com", "b@example.com"),
        (5, "b@example.com", "b@example.com"),
    )
    table.rows[0].reason = "suppressed"
    table.rows[2].reason = "missing field: name"
    dedupe_recipients(table)
    assert [r.reason for r in table.rows] == ["suppressed", None, "missing field: name", None]


def test_without_validate_falls_back_to_lower_cased_address() -> None:
    table = rows((2, "A@x.org", None), (3, " a@X.org ", None), (4, "b@x.org", None))
    dedupe_recipients(table)
    assert [r.reason for r in table.rows] == [None, "duplicate of row 2", None]


def test_ingest_validate_dedupe(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(
        "email;name\n Ann@Example.COM ;Ann\nbob@example.com;Bob\n\nANN@example.com;Ann 2\nnope;X\n"
        "bob@EXAMPLE.com;Bob 2\n",
        encoding="utf-8",
    )
    table = read_recipients(RecipientSource(path="r.csv"), tmp_path)
    dedupe_recipients(validate_recipients(table))
    assert [(r.row, r.address, r.reason) for r in table.rows] == [
        (2, "Ann@example.com", None),
        (3, "bob@example.com", None),
        (5, "ANN@example.com", "duplicate of row 2"),
        (6, "nope", "invalid address: An email address must have an @-sign."),
        (7, "bob@example.com", "duplicate of row 3"),
    ]
    assert summarize(table) == {"ok": 2, "duplicate": 2, "invalid address": 1}


def test_dedupe_recipients_names_the_first_row() -> None:
    table = rows((2, "a@x.org", "a@x.org"), (3, "a@x.org", "a@x.org"))
    assert dedupe_recipients(table).rows[1].reason == "duplicate of row 2"
