"""Drop repeated recipients: the first row with an address is sent, later ones are skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from mailcast.recipients import Recipient, RecipientTable


def dedupe_recipients(table: RecipientTable) -> RecipientTable:
    """Among rows still to be sent, keep the first of each ``key`` (the lower-cased normalized
    address set by validate; the lower-cased address if validate did not run). Later rows get
    ``reason = "duplicate of row N"``. Rejected rows are untouched. Mutates and returns ``table``.
    """
    for _ in dedupe_rows(table.rows):
        pass
    return table


def dedupe_rows(rows: Iterable[Recipient]) -> Iterator[Recipient]:
    """``dedupe_recipients`` for a stream of rows: each row marked as it passes. Only the keys
    seen so far are kept (with the row that had each first)."""
    first: dict[str, int] = {}
    for r in rows:
        if r.reason is None:
            key = r.key if r.key is not None else r.address.strip().lower()
            seen = first.get(key)
            if seen is None:
                first[key] = r.row
            else:
                r.reason = f"duplicate of row {seen}"
        yield r
