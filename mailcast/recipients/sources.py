"""Open a campaign's recipient data, whatever its source: a CSV/TSV/TXT file (``csv_source``), an
Excel workbook (``xlsx_source``), a SQL query (``sql_source``) or the contacts of a list or a
segment in the ledger (``audience``). Each gives a
:class:`~mailcast.recipients.stream.RecipientStream`: the checked header now, the rows as they
are read.
"""

from __future__ import annotations

from pathlib import Path

from mailcast.errors import SourceError, SpecError
from mailcast.recipients.csv_source import CSV_SUFFIXES, read_csv
from mailcast.recipients.model import RecipientTable
from mailcast.recipients.sql_source import read_sql
from mailcast.recipients.stream import RecipientStream
from mailcast.recipients.xlsx_source import XLSX_SUFFIXES, read_xlsx
from mailcast.spec import RecipientSource, campaign_file

SUPPORTED = ", ".join(CSV_SUFFIXES + XLSX_SUFFIXES)

__all__ = ["RecipientStream", "open_recipients", "read_columns", "read_recipients"]


def open_recipients(
    source: RecipientSource, base_dir: str | Path, database_url: str | None = None
) -> RecipientStream:
    """Open ``source`` and read its header; the rows are read as the stream is iterated. A
    relative ``source.path`` resolves against ``base_dir`` (not confined: campaigns read their
    recipients through ``read_columns`` and ``prepare.checked_recipients``, which are).
    Problems with the source as a whole (no such file, no header, the email column missing)
    raise here. A list or a segment is read from the ledger at ``database_url`` (default: the
    settings' ledger)."""
    if source.sql is not None:
        return read_sql(source)
    if source.audience is not None:
        from mailcast.recipients.audience import read_audience
        from mailcast.settings import Settings

        return read_audience(source, database_url or Settings().ledger_url())
    if source.path is None:  # pragma: no cover - RecipientSource guarantees one of the two
        raise SpecError("give `path`, `sql`, `list` or `segment`", where="recipients")
    path = Path(source.path).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    where = str(path)
    if not path.exists():
        raise SourceError("no such file", where=where, hint="check `recipients.path` in the spec")
    if path.is_dir():
        raise SourceError(
            "is a directory, not a file", where=where, hint="point `recipients.path` at a file"
        )
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise SourceError(
            "old Excel .xls workbooks are not supported",
            where=where,
            hint="open it in Excel or LibreOffice and save it as .xlsx (or export it as CSV)",
        )
    if suffix not in CSV_SUFFIXES + XLSX_SUFFIXES:
        raise SourceError(
            f"unsupported file type {suffix or '(no extension)'!r}; supported: {SUPPORTED}",
            where=where,
            hint="export the recipients as CSV (UTF-8) or .xlsx",
        )
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"cannot read: {exc.strerror or exc}", where=where) from None
    if size == 0:
        raise SourceError("file is empty (no header row)", where=where)
    if suffix in XLSX_SUFFIXES:
        return read_xlsx(path, source)
    return read_csv(path, source)


def read_columns(
    source: RecipientSource, base_dir: str | Path, database_url: str | None = None
) -> list[str]:
    """The campaign's recipient columns: its header, read and checked (the rows are not read).
    A recipient file must be inside the campaign folder ``base_dir``, itself inside a campaign
    root (``mailcast.spec.campaign_file``)."""
    if source.path is not None:
        campaign_file(base_dir, source.path, field="recipients.path", error=SourceError)
    with open_recipients(source, base_dir, database_url) as stream:
        return stream.columns


def read_recipients(source: RecipientSource, base_dir: str | Path) -> RecipientTable:
    """Every row of ``source`` in memory (a collector over ``open_recipients``)."""
    with open_recipients(source, base_dir) as stream:
        return stream.table()
