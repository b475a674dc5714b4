"""What every recipient source has in common: the open stream of rows, the header check, how a
cell becomes text, and the per-field checks (length, NUL bytes) every row passes.

Everything a source yields is a :class:`~mailcast.recipients.Recipient` of string values,
numbered the way a user finds the row (the line in an editor, the Excel row number, the 1-based
position in a SQL result). Problems with the data as a whole raise
:class:`~mailcast.errors.SourceError` naming the file (and line); problems with a single row only
mark that row with a ``reason`` (it is recorded as skipped, never sent).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from mailcast.errors import SourceError
from mailcast.recipients.model import Recipient, RecipientTable, gc_paused
from mailcast.spec import RecipientSource

# The longest field a row may hold: the stdlib csv reader's limit (131,072 characters), which
# CSV files get from the reader itself and the other sources from ``checked_fields``.
FIELD_LIMIT = csv.field_size_limit()


class RecipientStream:
    """The rows of a source, read one at a time (what a run of a million rows needs: only the
    row at hand is in memory). ``columns`` and ``source`` are known once it is open (the header
    has been read and checked); iterating yields each :class:`Recipient` in order, and raises
    :class:`SourceError` for a problem found further down the data (a line that cannot be
    parsed or decoded). Use it as a context manager: leaving closes the file, workbook or
    database connection."""

    def __init__(
        self, source: str, columns: list[str], rows: Iterator[Recipient], close: Any = None
    ) -> None:
        self.source = source
        self.columns = columns
        self._rows = rows
        self._close = close

    def __iter__(self) -> Iterator[Recipient]:
        return self._rows

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()

    def __enter__(self) -> RecipientStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def table(self) -> RecipientTable:
        """Every remaining row, in memory."""
        with gc_paused():
            return RecipientTable(source=self.source, columns=self.columns, rows=list(self))


def check_header(header: Sequence[str], source: RecipientSource, where: str) -> None:
    """Every column named, no name twice, the email (and name) column present."""
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if not name:
            raise SourceError(
                f"column {number} has an empty header name",
                where=where,
                hint="give every column a name in the header row",
            )
        if "\x00" in name:
            raise SourceError(
                f"column {number}: the header name {name!r} holds a NUL byte",
                where=where,
                hint="export the recipients again as CSV (UTF-8) or .xlsx",
            )
        if name in seen:
            raise SourceError(
                f"column {number}: duplicate header name {name!r} (also column {seen[name]})",
                where=where,
                hint="column names in the header row must be unique",
            )
        seen[name] = number
    wanted = [("email_column", source.email_column)]
    if source.name_column:
        wanted.append(("name_column", source.name_column))
    for option, column in wanted:
        if column in seen:
            continue
        found = ", ".join(repr(h) for h in header)
        close = [h for h in header if h.casefold() == column.casefold()]
        suggestion = close[0] if close else (header[0] if header else column)
        raise SourceError(
            f"no column {column!r} in the header; columns found: {found}; "
            f"set `{option}:` in the spec to one of them",
            where=where,
            hint=f"e.g. `{option}: {suggestion}` under `recipients:` in the spec",
        )


def cell_text(value: Any) -> str:
    """An Excel / SQL value as the text a template sees."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None and value.time() == dt.time(0):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return str(value).strip()


def checked_fields(
    values: list[str], columns: Sequence[str], index: int, label: str
) -> tuple[str | None, bool]:
    """Check one row's values (in place) for what the ledger cannot or should not store: a NUL
    byte (Postgres text cannot hold one) is removed, a field longer than ``FIELD_LIMIT`` is cut
    short. Returns the row's reason (None when it may be sent) and whether anything changed.
    A NUL byte in the address (column ``index``) rejects the row; in another field it is only
    removed. ``label`` names the row in a reason (``row 12`` or ``line 12``)."""
    joined = "".join(values)  # one cheap test for the common row: short, no NUL
    if len(joined) <= FIELD_LIMIT and "\x00" not in joined:
        return None, False
    reason = None
    for i, value in enumerate(values):
        if len(value) > FIELD_LIMIT:
            column = columns[i] if i < len(columns) else f"#{i + 1}"
            if reason is None:
                reason = (
                    f"field too long: {label}, column {column!r} holds {len(value):,} characters"
                    f" (at most {FIELD_LIMIT:,})"
                )
            value = values[i] = value[:200] + "…"
        if "\x00" in value:
            values[i] = value.replace("\x00", "")
            if i == index and reason is None:
                reason = f"invalid address: {label}: the address contains a NUL byte"
    return reason, True
