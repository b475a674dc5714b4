"""Exporting a run's per-recipient ledger: CSV, JSON, XLSX, Parquet. Streams in batches, so a
1,000,000-row run exports with bounded memory.

Recipient data is untrusted: in a CSV export, a text cell that a spreadsheet would read as a
formula (starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is written with a
leading ``'`` (the OWASP guidance on CSV injection), unless ``neutralize_formulas=False``. XLSX
cells are typed: text is written as text, never as a formula."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

from mailcast.errors import SpecError
from mailcast.ledger.store import Ledger

FORMATS = ("csv", "json", "xlsx", "parquet")
COLUMNS = list(Ledger.REPORT_COLUMNS)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize_formula(value: Any) -> Any:
    """``value`` as a spreadsheet shows it as text: a string a spreadsheet would evaluate as a
    formula gets a leading single quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["fields"] = json.dumps(row["fields"], ensure_ascii=False, sort_keys=True)
    for key in ("sent_at", "updated_at"):
        if isinstance(out[key], datetime):
            out[key] = out[key].isoformat()
    return out


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    it = iter(rows)
    while batch := list(islice(it, size)):
        yield batch


def export_rows(
    rows: Iterable[dict[str, Any]], out: Path, fmt: str, *, neutralize_formulas: bool = True
) -> int:
    """Write the rows to ``out`` in ``fmt``; returns the number of rows written. In CSV, cells
    that start like a formula are prefixed with ``'`` unless ``neutralize_formulas`` is False."""
    if fmt not in FORMATS:
        raise SpecError(f"unknown format {fmt!r}", where="--format", hint=f"one of {FORMATS}")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if fmt == "csv":
        with out.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            for row in rows:
                flat = _flat(row)
                if neutralize_formulas:
                    flat = {k: neutralize_formula(v) for k, v in flat.items()}
                writer.writerow(flat)
                n += 1
    elif fmt == "json":
        with out.open("w", encoding="utf-8") as fh:
            fh.write("[")
            for row in rows:
                fh.write(
                    ("," if n else "")
                    + "\n"
                    + json.dumps(
                        _flat(row) | {"fields": row["fields"]}, ensure_ascii=False, default=str
                    )
                )
                n += 1
            fh.write("\n]\n")
    elif fmt == "xlsx":
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("deliveries")

        def cell(value: Any) -> Any:
            # Recipient data is untrusted: control characters (which openpyxl refuses) are
            # written as \xNN, and text starting with "=" stays text instead of a formula.
            if not isinstance(value, str):
                return value
            value = ILLEGAL_CHARACTERS_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
            if not value.startswith("="):
                return value
            text = WriteOnlyCell(ws, value=value)
            text.data_type = "s"
            return text

        ws.append(COLUMNS)
        for row in rows:
            flat = _flat(row)
            ws.append([cell(flat[c]) for c in COLUMNS])
            n += 1
        wb.save(out)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [
                ("row_no", pa.int64()), ("address", pa.string()), ("status", pa.string()),
                ("reason", pa.string()), ("attempts", pa.int64()), ("smtp_code", pa.int64()),
                ("smtp_reply", pa.string()), ("message_id", pa.string()),
                ("provider_message_id", pa.string()), ("sent_at", pa.string()), ("updated_at", pa.string()), ("fields", pa.string()),
            ]
        )  # fmt: skip
        with pq.ParquetWriter(out, schema) as writer:
            for batch in _batches(rows, 50_000):
                table = pa.Table.from_pylist([_flat(r) for r in batch], schema=schema)
                writer.write_table(table)
                n += len(batch)
    return n


def export_run(
    ledger: Ledger, run_id: str, out: Path, fmt: str, *, neutralize_formulas: bool = True
) -> int:
    run = ledger.run(run_id)
    return export_rows(ledger.deliveries(run.id), out, fmt, neutralize_formulas=neutralize_formulas)


def export_report(
    database_url: str,
    run_id: str,
    fmt: str,
    out: str | None,
    *,
    neutralize_formulas: bool = True,
) -> tuple[str, int]:
    """Export run ``run_id`` (a unique prefix will do) to ``out`` (default
    ``mailcast-<run>.<fmt>``); returns the path and the number of rows."""
    ledger = Ledger(database_url)
    run = ledger.run(run_id)
    path = Path(out) if out else Path(f"mailcast-{run.id}.{fmt}")
    written = export_run(ledger, run.id, path, fmt, neutralize_formulas=neutralize_formulas)
    return str(path), written
