"""Recipients from a CSV/TSV/TXT file, streamed through the stdlib ``csv`` module (never loaded as
one string): the encoding and delimiter are chosen from the declared ones or sniffed, binary files
and undecodable lines are refused with the line to look at."""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from mailcast.errors import SourceError, SpecError
from mailcast.recipients.model import Recipient
from mailcast.recipients.stream import (
    FIELD_LIMIT,
    RecipientStream,
    check_header,
    checked_fields,
)
from mailcast.spec import RecipientSource

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
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


def read_csv(path: Path, source: RecipientSource) -> RecipientStream:
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
            header, rows = _csv_rows(
                text_file, delimiter, source, where, reopen=lambda: _reopen(path, encoding)
            )
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


def _reopen(path: Path, encoding: str) -> TextIO:
    return path.open("r", encoding=encoding, newline="", errors="replace")


def _capped(lines: Iterable[str], chars: int) -> Iterator[str]:
    """The lines until about ``chars`` characters were read (a field never closed does not
    read the rest of a large file into memory)."""
    for text in lines:
        yield text
        chars -= len(text)
        if chars <= 0:
            return


def _long_field(
    reopen: Callable[[], TextIO], delimiter: str, line: int, columns: Sequence[str]
) -> str | None:
    """Which column of the record starting at ``line`` is over the csv module's field limit
    (read again with the limit lifted for that one record), as ``column 'note' holds N
    characters``; None when it cannot be told."""

    limit = csv.field_size_limit()
    try:
        csv.field_size_limit(sys.maxsize)
        with reopen() as fh:
            reader = csv.reader(
                _capped(itertools.islice(fh, line - 1, None), 64 * FIELD_LIMIT),
                delimiter=delimiter,
                quotechar='"',
                skipinitialspace=True,
            )
            cells = next(reader, [])
    except (OSError, csv.Error):
        return None
    finally:
        csv.field_size_limit(limit)
    for i, cell in enumerate(cells):
        if len(cell) > limit:
            name = columns[i] if i < len(columns) else f"#{i + 1}"
            return f"column {name!r} holds {len(cell):,} characters (at most {limit:,})"
    return None


def _csv_rows(
    lines: Iterable[str],
    delimiter: str,
    source: RecipientSource,
    where: str,
    reopen: Callable[[], TextIO] | None = None,
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
            field = _long_field(reopen, delimiter, line, header or []) if reopen else None
            if field is not None:
                return SourceError(
                    f"line {line}: cannot parse: {exc}: {field}",
                    where=f"{where}:{line}",
                    hint='shorten that field, or close the quote (") it opens',
                )
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
    check_header(header, source, f"{where}:{line}")
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
                joined = "".join(values)
                if "\x00" in joined:  # the csv reader already refused fields over the limit
                    nul, _ = checked_fields(values, columns, index, f"line {line}")
                    reason = reason or nul
                fields = dict(zip(columns, values, strict=False))
                yield Recipient(line, values[index], fields, reason)
        except csv.Error as exc:
            raise parse_error(exc) from None

    return columns, rows()
