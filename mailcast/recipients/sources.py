"""Read recipient data: CSV/TSV/TXT files, Excel workbooks (.xlsx) or a SQL query.

Everything comes back as a :class:`~mailcast.recipients.RecipientTable` of string values, one
:class:`~mailcast.recipients.Recipient` per row, numbered the way a user finds the row (the line
in an editor, the Excel row number, the 1-based position in a SQL result). Problems with the data
as a whole raise :class:`~mailcast.errors.SourceError` naming the file (and line); problems with a
single row (too many fields) only mark that row with a ``reason``.

CSV files are streamed through the stdlib ``csv`` module, never loaded as one string.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mailcast.errors import SourceError, SpecError
from mailcast.recipients import Recipient, RecipientTable, gc_paused
from mailcast.spec import RecipientSource

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
XLSX_SUFFIXES = (".xlsx", ".xlsm")
SUPPORTED = ", ".join(CSV_SUFFIXES + XLSX_SUFFIXES)
CANDIDATE_DELIMITERS = (",", ";", "\t", "|")
SNIFF_BYTES = 64 * 1024
BINARY_PROBE_BYTES = 8 * 1024

_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (an .xlsx workbook is one: if it is, name it .xlsx)"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (.xls/.doc)"),
)
_ENCODING_HINT = (
    "save the file as UTF-8, or declare its encoding under `recipients:` in the spec, "
    "e.g. `encoding: cp1252` (Excel on Windows) or `encoding: latin-1`"
)


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


def read_recipients(source: RecipientSource, base_dir: str | Path) -> RecipientTable:
    """Read every row of ``source``; a relative ``source.path`` resolves against ``base_dir``."""
    with open_recipients(source, base_dir) as stream:
        return stream.table()


def open_recipients(source: RecipientSource, base_dir: str | Path) -> RecipientStream:
    """Open ``source`` and read its header; the rows are read as the stream is iterated. A
    relative ``source.path`` resolves against ``base_dir``. Problems with the source as a whole
    (no such file, no header, the email column missing) raise here."""
    if source.sql is not None:
        return _read_sql(source)
    if source.path is None:  # pragma: no cover - RecipientSource guarantees one of the two
        raise SpecError("give `path` or `sql`", where="recipients")
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
        return _read_xlsx(path, source)
    return _read_csv(path, source)


# --------------------------------------------------------------------------------------------
# helpers shared by the readers


def _check_header(header: Sequence[str], source: RecipientSource, where: str) -> None:
    seen: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if not name:
            raise SourceError(
                f"column {number} has an empty header name",
                where=where,
                hint="give every column a name in the header row",
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


def _cell_text(value: Any) -> str:
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


# --------------------------------------------------------------------------------------------
# CSV / TSV / TXT


def _resolve_delimiter(source: RecipientSource) -> str | None:
    value = source.delimiter
    if value is None or value == "":
        return None
    if value in ("\\t", "tab", "TAB", "Tab"):
        return "\t"
    if len(value) != 1 or value in ('"', "\r", "\n"):
        raise SpecError(
            f"delimiter must be one character (got {value!r})",
            where="recipients.delimiter",
            hint='e.g. `delimiter: ";"` or `delimiter: "\\t"` for tabs',
        )
    return value


def _choose_encoding(head: bytes, declared: str | None, where: str) -> str:
    """The codec to read the file with, from the declared encoding and the first bytes."""
    if declared:
        try:
            name = codecs.lookup(declared).name
        except LookupError:
            raise SourceError(
                f"unknown encoding {declared!r} (from `encoding:` in the spec)",
                where=where,
                hint="use a Python codec name such as utf-8, cp1252, latin-1 or utf-16",
            ) from None
        if name == "utf-8" and head.startswith(_UTF8_BOM):
            return "utf-8-sig"
        return name
    if head.startswith(_UTF8_BOM):
        return "utf-8-sig"
    if head.startswith(_UTF16_BOMS):
        return "utf-16"
    return "utf-8"


def _check_not_binary(head: bytes, encoding: str, where: str) -> None:
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise SourceError(
                f"not a text file: this looks like {what}",
                where=where,
                hint="export the recipients as CSV (UTF-8) or .xlsx",
            )
    if encoding.startswith(("utf-16", "utf-32")):
        return
    if b"\x00" in head[:BINARY_PROBE_BYTES]:
        raise SourceError(
            "not a text file: it contains binary data (NUL bytes)",
            where=where,
            hint="export the recipients as CSV (UTF-8) or .xlsx",
        )


def _decode_error(path: Path, encoding: str, declared: str | None) -> SourceError:
    """Find the first line that does not decode, for a message a user can act on."""
    label = "UTF-8" if encoding.startswith("utf-8") else encoding
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    line = 1
    with path.open("rb") as raw_file:
        for raw in raw_file:
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                start = max(0, min(exc.start, len(raw)))
                before = raw[:start]
                line += before.count(b"\r") - before.count(b"\r\n")
                column = len(before.decode(encoding, errors="replace")) + 1
                bad = raw[start : start + 1].hex().upper() or "??"
                message = f"line {line} is not valid {label} (byte 0x{bad} at column {column})"
                if declared:
                    hint = f"the file does not match `encoding: {declared}`; check the spec"
                else:
                    message += "; set `encoding:` in the spec (e.g. `encoding: cp1252`)"
                    hint = _ENCODING_HINT
                return SourceError(message, where=f"{path}:{line}", hint=hint)
            line += 1 + raw.count(b"\r") - raw.count(b"\r\n")
    return SourceError(
        f"the file is not valid {label}",
        where=str(path),
        hint=_ENCODING_HINT if not declared else "check `encoding:` in the spec",
    )


def _sample_records(sample: str, delimiter: str, complete: bool) -> list[list[str]]:
    """The records of ``sample`` from the header on, blank lines left out; when the sample is
    only the start of the file, its last record may be cut off, so it is dropped."""
    reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter, skipinitialspace=True)
    try:
        records = [cells for cells in reader if cells]
    except csv.Error:
        return []
    if not complete and len(records) > 1:
        records.pop()
    for start, cells in enumerate(records):
        if any(c.strip() for c in cells):
            return records[start:]
    return []


def _sniff_delimiter(sample: str, complete: bool, email_column: str) -> str:
    """Pick among ``, ; TAB |``. A delimiter under which the header holds the email column wins;
    among those, the one that gives the most rows exactly the header's width; remaining ties go
    to csv.Sniffer's guess, then to the order above."""
    cut = max(sample.rfind("\n"), sample.rfind("\r"))
    text = sample[: cut + 1] if cut > 0 and not complete else sample
    try:
        sniffed = csv.Sniffer().sniff(text, delimiters="".join(CANDIDATE_DELIMITERS)).delimiter
    except csv.Error:
        sniffed = ","
    candidates = [sniffed, *(d for d in CANDIDATE_DELIMITERS if d != sniffed)]
    best, best_score = sniffed, (-1, -1)
    for delimiter in candidates:
        records = _sample_records(sample, delimiter, complete)
        if not records:
            continue
        header, rows = records[0], records[1:]
        width = len(header)
        has_email = email_column in (c.strip() for c in header)
        score = (int(has_email), sum(1 for r in rows if len(r) == width))
        if score > best_score:
            best, best_score = delimiter, score
    return best


def _read_csv(path: Path, source: RecipientSource) -> RecipientStream:
    where = str(path)
    with path.open("rb") as raw_file:
        head = raw_file.read(BINARY_PROBE_BYTES)
    encoding = _choose_encoding(head, source.encoding, where)
    _check_not_binary(head, encoding, where)
    delimiter = _resolve_delimiter(source)
    if delimiter is None and path.suffix.lower() == ".tsv":
        delimiter = "\t"
    text_file = path.open("r", encoding=encoding, newline="", errors="strict")
    try:
        with _decoding(path, encoding, source.encoding):
            if delimiter is None:
                sample = text_file.read(SNIFF_BYTES)
                complete = len(sample) < SNIFF_BYTES
                text_file.seek(0)
                delimiter = _sniff_delimiter(sample, complete, source.email_column)
            header, rows = _csv_rows(text_file, delimiter, source, where)
    except BaseException:
        text_file.close()
        raise

    def decoded() -> Iterator[Recipient]:
        with _decoding(path, encoding, source.encoding):
            yield from rows

    return RecipientStream(where, header, decoded(), text_file.close)


@contextmanager
def _decoding(path: Path, encoding: str, declared: str | None) -> Iterator[None]:
    """A decoding error while reading the file as the SourceError a user can act on."""
    try:
        yield
    except UnicodeDecodeError:
        raise _decode_error(path, encoding, declared) from None
    except UnicodeError as exc:  # e.g. a UTF-16 file without a BOM
        raise SourceError(f"cannot decode as {encoding}: {exc}", where=str(path)) from None


def _parse_csv(
    lines: Iterable[str], delimiter: str, source: RecipientSource, where: str
) -> RecipientTable:
    header, rows = _csv_rows(lines, delimiter, source, where)
    with gc_paused():
        return RecipientTable(source=where, columns=header, rows=list(rows))


def _csv_rows(
    lines: Iterable[str], delimiter: str, source: RecipientSource, where: str
) -> tuple[list[str], Iterator[Recipient]]:
    """Read and check the header now; the rows as they are iterated."""
    reader = csv.reader(lines, delimiter=delimiter, quotechar='"', skipinitialspace=True)
    previous = 0  # reader.line_num after the previous record: a record starts on the next line
    header: list[str] | None = None
    line = 0

    def parse_error(exc: csv.Error) -> SourceError:
        line = previous + 1
        hint = None
        if "field limit" in str(exc):
            hint = 'a quote (") opened on this line is probably never closed'
        return SourceError(f"line {line}: cannot parse: {exc}", where=f"{where}:{line}", hint=hint)

    try:
        for cells in reader:
            line = previous + 1
            previous = reader.line_num
            stripped = [c.strip() for c in cells]
            if any(stripped):
                header = stripped
                break
    except csv.Error as exc:
        raise parse_error(exc) from None
    if header is None:
        raise SourceError("no header row (the file holds only blank lines)", where=where)
    while header and not header[-1]:  # trailing empty cells, e.g. "email,name,,"
        header.pop()
    _check_header(header, source, f"{where}:{line}")
    columns = header

    def rows() -> Iterator[Recipient]:
        nonlocal previous
        width = len(columns)
        index = columns.index(source.email_column)
        try:
            for cells in reader:
                line = previous + 1
                previous = reader.line_num
                values = list(map(str.strip, cells))
                if not any(values):
                    continue  # blank line (or only delimiters / whitespace)
                count = len(values)
                reason = None
                if count != width:
                    if count < width:
                        values.extend([""] * (width - count))
                    elif any(values[width:]):
                        reason = f"row has {count} fields, header has {width}"
                fields = dict(zip(columns, values, strict=False))
                yield Recipient(line, values[index], fields, reason)
        except csv.Error as exc:
            raise parse_error(exc) from None

    return columns, rows()


# --------------------------------------------------------------------------------------------
# Excel


def _read_xlsx(path: Path, source: RecipientSource) -> RecipientStream:
    where = str(path)
    with path.open("rb") as raw_file:
        head = raw_file.read(8)
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise SourceError(
            "not an .xlsx workbook: it is password-protected or an old .xls file renamed",
            where=where,
            hint="remove the password, or open it in Excel/LibreOffice and save it as .xlsx",
        )
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile, KeyError, InvalidFileException, ...
        raise SourceError(
            f"not a valid .xlsx workbook ({type(exc).__name__}: {exc})",
            where=where,
            hint="open it in Excel or LibreOffice and save it again as .xlsx, or export CSV",
        ) from None
    opened = False
    try:
        if source.sheet is not None:
            if source.sheet not in workbook.sheetnames:
                sheets = ", ".join(repr(s) for s in workbook.sheetnames)
                raise SourceError(
                    f"no sheet {source.sheet!r} in the workbook; sheets: {sheets}",
                    where=where,
                    hint="set `sheet:` in the spec to one of these",
                )
            sheet = workbook[source.sheet]
        elif workbook.worksheets:
            sheet = workbook.worksheets[0]
        else:
            raise SourceError("the workbook has no worksheets", where=where)
        if not hasattr(sheet, "iter_rows"):
            raise SourceError(f"sheet {sheet.title!r} is a chart sheet, not a table", where=where)
        where_sheet = f"{where}[{sheet.title}]" if source.sheet else where
        columns, rows = _sheet_rows(sheet.iter_rows(values_only=True), source, where, where_sheet)
        opened = True
        return RecipientStream(where, columns, rows, workbook.close)
    finally:
        if not opened:
            workbook.close()


def _parse_sheet(
    sheet_rows: Iterable[Sequence[Any]], source: RecipientSource, where: str, label: str
) -> RecipientTable:
    columns, rows = _sheet_rows(sheet_rows, source, where, label)
    with gc_paused():
        return RecipientTable(source=where, columns=columns, rows=list(rows))


def _sheet_rows(
    sheet_rows: Iterable[Sequence[Any]], source: RecipientSource, where: str, label: str
) -> tuple[list[str], Iterator[Recipient]]:
    """Read and check the header row now; the rows as they are iterated."""
    iterator = enumerate(sheet_rows, start=1)
    header: list[str] | None = None
    lo = header_row = 0
    for number, cells in iterator:
        values = [_cell_text(c) for c in cells]
        if any(values):
            lo = 0
            while not values[lo]:
                lo += 1
            hi = len(values)
            while not values[hi - 1]:
                hi -= 1
            header = values[lo:hi]
            header_row = number
            break
    if header is None:
        raise SourceError("the sheet is empty (no header row)", where=label)
    _check_header(header, source, f"{where}:{header_row}")

    columns = header

    def rows() -> Iterator[Recipient]:
        width = len(columns)
        index = columns.index(source.email_column)
        for number, cells in iterator:
            values = [_cell_text(c) for c in cells]
            if not any(values):
                continue
            reason = None
            inside = values[lo : lo + width]
            if any(values[:lo]) or any(values[lo + width :]):
                used = [i for i, v in enumerate(values) if v]
                count = max(used[-1] + 1, lo + width) - min(used[0], lo)
                reason = f"row has {count} fields, header has {width}"
            if len(inside) < width:
                inside.extend([""] * (width - len(inside)))
            fields = dict(zip(columns, inside, strict=True))
            yield Recipient(number, inside[index], fields, reason)

    return columns, rows()


# --------------------------------------------------------------------------------------------
# SQL


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for messages and the ledger)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _db_message(exc: BaseException, url: str) -> str:
    """The first line of the driver's message, with the URL's password (if any) masked."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    text = text.splitlines()[0] if text else type(exc).__name__
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        password = None
    text = text.replace(url, mask_url(url))
    if password:
        text = text.replace(str(password), "***")
    return text


def _read_sql(source: RecipientSource) -> RecipientStream:
    assert source.sql is not None
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = source.sql.url
    where = mask_url(url)
    try:
        engine = create_engine(url)
    except ModuleNotFoundError as exc:
        raise SourceError(
            f"the database driver {exc.name!r} is not installed",
            where=where,
            hint="install the driver, or check the URL's scheme (e.g. postgresql+psycopg://)",
        ) from None
    except Exception as exc:
        raise SourceError(
            f"invalid database URL: {_db_message(exc, url)}",
            where=where,
            hint="check `recipients.sql.url` (a SQLAlchemy URL, e.g. postgresql+psycopg://...)",
        ) from None

    def query_failed(exc: SQLAlchemyError) -> SourceError:
        return SourceError(
            f"query failed: {_db_message(exc, url)}",
            where=where,
            hint="check `recipients.sql.query` (it must be a SELECT returning rows)",
        )

    conn = None
    try:
        try:
            conn = engine.connect()
        except Exception as exc:
            raise SourceError(
                f"cannot connect: {_db_message(exc, url)}",
                where=where,
                hint="check `recipients.sql.url`: host, port, database, user and password",
            ) from None
        try:
            result = conn.execution_options(stream_results=True).execute(text(source.sql.query))
            names = result.keys()
            columns = [str(c).strip() for c in names]
        except SQLAlchemyError as exc:
            raise query_failed(exc) from None
        _check_header(columns, source, where)
    except BaseException:
        if conn is not None:
            conn.close()
        engine.dispose()
        raise
    index = columns.index(source.email_column)

    def rows() -> Iterator[Recipient]:
        try:
            for number, record in enumerate(result, start=1):
                values = [_cell_text(v) for v in record]
                yield Recipient(number, values[index], dict(zip(columns, values, strict=True)))
        except SQLAlchemyError as exc:
            raise query_failed(exc) from None

    def close() -> None:
        try:
            conn.close()
        finally:
            engine.dispose()

    return RecipientStream(where, columns, rows(), close)


def read_columns(source: RecipientSource, base_dir: str | Path) -> list[str]:
    """The recipient data's columns: its header, read and checked (the rows are not read)."""
    with open_recipients(source, base_dir) as stream:
        return stream.columns
