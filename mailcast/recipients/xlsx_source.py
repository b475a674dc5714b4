"""Recipients from an Excel workbook (.xlsx/.xlsm), read with openpyxl in read-only mode (row by
row): the first sheet or the one named in the spec; cells become text as ``cell_text`` says."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from mailcast.errors import SourceError
from mailcast.recipients.model import Recipient
from mailcast.recipients.stream import RecipientStream, cell_text, check_header, checked_fields
from mailcast.spec import RecipientSource

XLSX_SUFFIXES = (".xlsx", ".xlsm")


def read_xlsx(path: Path, source: RecipientSource) -> RecipientStream:
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


def _sheet_rows(
    sheet_rows: Iterable[Sequence[Any]], source: RecipientSource, where: str, label: str
) -> tuple[list[str], Iterator[Recipient]]:
    """Read and check the header row now; the rows as they are iterated."""
    iterator = enumerate(sheet_rows, start=1)
    header: list[str] | None = None
    lo = header_row = 0
    for number, cells in iterator:
        values = [cell_text(c) for c in cells]
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
    check_header(header, source, f"{where}:{header_row}")

    columns = header

    def rows() -> Iterator[Recipient]:
        width = len(columns)
        index = columns.index(source.email_column)
        for number, cells in iterator:
            values = [cell_text(c) for c in cells]
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
            checked, _ = checked_fields(inside, columns, index, f"row {number}")
            fields = dict(zip(columns, inside, strict=True))
            yield Recipient(number, inside[index], fields, reason or checked)

    return columns, rows()
