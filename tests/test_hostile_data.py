"""Hostile recipient data (issue 11 §4): NUL bytes and oversized cells end as a skipped row with a
reason (or a cleaned field), and everyone else is still planned and sent to."""

from __future__ import annotations

import csv
import io
import sqlite3
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from openpyxl import Workbook

from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import prepare_run
from mailcast.recipients.sources import read_recipients
from mailcast.recipients.stream import FIELD_LIMIT
from mailcast.spec import RecipientSource, SqlSource, load_spec
from mailcast.transport.factory import Target
from tests.campaigns import people, write_campaign


def deliveries(db: str, run_id: str) -> dict[int, dict[str, object]]:
    return {d["row_no"]: d for d in Ledger(db).deliveries(run_id)}


@pytest.mark.postgres
def test_nul_bytes_past_the_binary_probe_skip_one_row_and_plan_the_rest(
    tmp_path: Path, pg_url: str
) -> None:
    """A NUL in an address deep in the file (past the first 8 KB, which the binary probe reads)
    rejects that row with a reason; a NUL in another field is removed. The Postgres COPY of
    the plan goes through and every other row is pending."""
    rows = people(400)
    spec_path = write_campaign(tmp_path / "c", rows, attachments=False)
    data = Path(spec_path.parent / "data" / "recipients.csv")
    text = data.read_text(encoding="utf-8")
    assert text.index("person300@") > 8 * 1024
    text = text.replace("person300@example.com", "person300\x00@example.com")
    text = text.replace("Fïrst350", "Fï\x00rst350")
    data.write_text(text, encoding="utf-8")
    spec = load_spec(spec_path)

    planned = prepare_run(pg_url, spec, Target(outbox=str(tmp_path / "out")), run_id="nul-1")

    assert planned.rows == 400 and planned.to_send == 399
    assert planned.outcomes["invalid address"] == 1
    by_row = deliveries(pg_url, "nul-1")
    bad = by_row[302]  # header = line 1, person0 = line 2
    assert bad["status"] == "skipped"
    assert "NUL" in str(bad["reason"]) and "line 302" in str(bad["reason"])
    assert "\x00" not in str(bad["address"])
    cleaned = by_row[352]
    assert cleaned["status"] == "pending"
    assert cleaned["fields"]["first_name"] == "Fïrst350"  # type: ignore[index]
    assert sum(1 for d in by_row.values() if d["status"] == "pending") == 399


def test_nul_in_sql_values(tmp_path: Path) -> None:
    """The same rule for a SQL source (SQLite text may hold NUL; an XLSX cannot, XML refuses it):
    a NUL never reaches the ledger."""
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table people (email text, name text)")
        conn.executemany(
            "insert into people values (?, ?)",
            [("a\x00@example.com", "A"), ("b@example.com", "B\x00b")],
        )
    source = RecipientSource(
        sql=SqlSource(url=f"sqlite:///{db}", query="select email, name from people order by email")
    )
    first, second = read_recipients(source, tmp_path).rows
    assert first.reason and "NUL" in first.reason and "row 1" in first.reason
    assert "\x00" not in first.address and "\x00" not in first.fields["email"]
    assert second.reason is None and second.fields["name"] == "Bb"


def big_workbook(path: Path, rows: list[list[str]], big: dict[str, str]) -> None:
    """A workbook whose cells may exceed Excel's 32,767 characters (openpyxl cuts longer values
    when writing; a hostile file need not): placeholders are replaced in the sheet's XML."""
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append(row)
    book.save(path)
    with zipfile.ZipFile(path) as zin:
        parts = {name: zin.read(name) for name in zin.namelist()}
    for key in ("xl/sharedStrings.xml", "xl/worksheets/sheet1.xml"):
        if key in parts:
            for placeholder, value in big.items():
                parts[key] = parts[key].replace(placeholder.encode(), value.encode())
    with zipfile.ZipFile(path, "w") as zout:
        for name, blob in parts.items():
            zout.writestr(name, blob)


def test_an_oversized_xlsx_cell_is_refused_with_row_and_column(tmp_path: Path) -> None:
    """The CSV reader's per-field limit (csv.field_size_limit, 131,072 characters) holds for
    workbooks too: the row is skipped with its row and column in the reason, the rest are
    planned, and the ledger does not store the huge value."""
    big_workbook(
        tmp_path / "r.xlsx",
        [
            ["email", "name", "notes"],
            ["a@example.com", "A", "short"],
            ["b@example.com", "B", "BIG1"],
            ["c@example.com", "C", "BIG2"],
            ["d@example.com", "D", "BIG3"],  # at the limit: fine
        ],
        {"BIG1": "x" * (FIELD_LIMIT + 1), "BIG2": "y" * 5_000_000, "BIG3": "z" * FIELD_LIMIT},
    )
    spec_path = write_campaign(
        tmp_path, people(1), attachments=False, data_file="r.xlsx"
    )  # templates only use email here
    text = spec_path.read_text(encoding="utf-8").replace(
        "{{ first_name }}, your code {{ code }}", "Hi"
    )
    spec_path.write_text(text, encoding="utf-8")
    (tmp_path / "templates" / "body.html.j2").write_text("<p>Hi {{ name }}</p>", encoding="utf-8")
    (tmp_path / "templates" / "body.txt.j2").write_text("Hi {{ name }}", encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"

    tracemalloc.start()
    try:
        planned = prepare_run(db, load_spec(spec_path), Target(outbox=str(tmp_path / "o")))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert planned.rows == 4 and planned.to_send == 2
    assert planned.outcomes["field too long"] == 2
    by_row = deliveries(db, planned.run_id)
    assert by_row[2]["status"] == by_row[5]["status"] == "pending"
    for row, size in ((3, FIELD_LIMIT + 1), (4, 5_000_000)):
        reason = str(by_row[row]["reason"])
        assert by_row[row]["status"] == "skipped"
        assert f"row {row}" in reason and "'notes'" in reason and f"{size:,}" in reason, reason
        assert len(str(by_row[row]["fields"])) < 1000  # type: ignore[index]
    assert peak < 200 * 1024 * 1024


def test_csv_field_limit_is_the_one_used_for_workbooks(tmp_path: Path) -> None:
    """The CSV reader refuses a field over the same limit (the whole file: it usually means an
    unclosed quote)."""
    buf = io.StringIO()
    csv.writer(buf).writerows([["email", "notes"], ["a@example.com", "x" * (FIELD_LIMIT + 1)]])
    (tmp_path / "r.csv").write_text(buf.getvalue(), encoding="utf-8")
    from mailcast.errors import SourceError

    with pytest.raises(SourceError, match="field larger than field limit"):
        read_recipients(RecipientSource(path="r.csv"), tmp_path)


HOSTILE_CELLS = [
    "=cmd|'/C calc'!A0@example.com",
    '=HYPERLINK("http://evil.example","click")',
    "+1+1@example.com",
    "-2+3@example.com",
    "@SUM(1+1)@example.com",
    "\t=1+1@example.com",
    "\r=1+1@example.com",
]


def planned_hostile_run(tmp_path: Path) -> tuple[str, str]:
    rows = [{"email": a, "name": "x"} for a in HOSTILE_CELLS] + [
        {"email": "ok@example.com", "name": "=1+2"}
    ]
    spec_path = write_campaign(tmp_path / "c", people(1), attachments=False)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["email", "name"])
    writer.writeheader()
    writer.writerows(rows)
    (spec_path.parent / "data" / "recipients.csv").write_text(buf.getvalue(), encoding="utf-8")
    text = spec_path.read_text(encoding="utf-8")
    spec_path.write_text(text.replace("{{ first_name }}, your code {{ code }}", "Hi"), "utf-8")
    for name in ("body.html.j2", "body.txt.j2"):
        (spec_path.parent / "templates" / name).write_text("Hi", encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    planned = prepare_run(db, load_spec(spec_path), Target(outbox=str(tmp_path / "o")))
    return db, planned.run_id


def test_csv_report_neutralizes_formulas_unless_raw(tmp_path: Path) -> None:
    """`mailcast report --format csv` writes recipient-provided cells that a spreadsheet would
    run as a formula with a leading single quote (OWASP); `--raw` writes them verbatim."""
    from typer.testing import CliRunner

    from mailcast.cli import app

    db, run_id = planned_hostile_run(tmp_path)
    out, raw_out = tmp_path / "r.csv", tmp_path / "raw.csv"
    runner = CliRunner()
    result = runner.invoke(
        app, ["report", run_id, "--format", "csv", "--out", str(out), "--db", db]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["report", run_id, "--format", "csv", "--out", str(raw_out), "--db", db, "--raw"]
    )
    assert result.exit_code == 0, result.output

    with out.open(newline="", encoding="utf-8") as fh:
        safe = list(csv.DictReader(fh))
    with raw_out.open(newline="", encoding="utf-8") as fh:
        raw = list(csv.DictReader(fh))
    addresses = [r["address"] for r in safe]
    for cell in HOSTILE_CELLS:
        stored = cell.strip()  # the reader strips each field
        if stored[0] in "=+-@":
            assert "'" + stored in addresses, addresses
        assert stored in [r["address"] for r in raw]
    for row in safe:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert sum(1 for r in raw if r["address"].startswith("=")) >= 2


def test_xlsx_report_keeps_formula_like_cells_as_text(tmp_path: Path) -> None:
    """XLSX cells are typed: the hostile values are text cells, never formulas."""
    from openpyxl import load_workbook

    from mailcast.export import export_report

    db, run_id = planned_hostile_run(tmp_path)
    path, n = export_report(db, run_id, "xlsx", str(tmp_path / "r.xlsx"))
    assert n == len(HOSTILE_CELLS) + 1
    sheet = load_workbook(path).active
    assert sheet is not None
    cells = [c for row in sheet.iter_rows(min_row=2) for c in row]
    formula_like = [c for c in cells if isinstance(c.value, str) and c.value[:1] in "=+-@"]
    assert len(formula_like) >= 5
    for c in cells:
        assert c.data_type != "f", (c.coordinate, c.value)
    with zipfile.ZipFile(path) as z:
        assert b"<f>" not in z.read("xl/worksheets/sheet1.xml")


@pytest.mark.postgres
@pytest.mark.usefixtures("prefect_harness")
def test_the_flow_sends_to_everyone_but_the_nul_address_on_postgres(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the send-campaign flow on a Postgres ledger (the worker's, from its settings):
    the row with a NUL in its address is skipped with the reason, the 299 others are sent."""
    from mailcast.flows.campaign import send_campaign

    from mailcast.capture import CaptureServer

    monkeypatch.setenv("MAILCAST_DATABASE_URL", pg_url)
    spec_path = write_campaign(
        tmp_path / "c", people(300), attachments=False, name="nul-through-the-flow"
    )
    data = spec_path.parent / "data" / "recipients.csv"
    text = data.read_text(encoding="utf-8")
    data.write_text(text.replace("person250@", "person250\x00@"), encoding="utf-8")
    with CaptureServer() as server:
        send_campaign(spec=load_spec(spec_path), dry_run=False, smtp_url=server.url)
        sent = {m.rcpt_tos[0] for m in server.messages}
    assert len(sent) == 299
    assert not any("person250" in a for a in sent)
    (run,) = [r for r in Ledger(pg_url).runs() if r.campaign == "nul-through-the-flow"]
    by_row = deliveries(pg_url, run.id)
    assert by_row[252]["status"] == "skipped" and "NUL" in str(by_row[252]["reason"])
    assert sum(1 for d in by_row.values() if d["status"] == "sent") == 299


def test_a_nul_in_a_header_name_is_refused_naming_the_column(tmp_path: Path) -> None:
    """A header is in the first 8 KB (where the binary probe refuses NUL bytes) unless it is
    very long; a SQL column name can hold one too. Refused, naming the column."""
    from mailcast.errors import SourceError

    header = "email," + ",".join(f"c{i}" for i in range(2000)) + ",bad\x00name\n"
    assert len(header) > 8 * 1024
    (tmp_path / "r.csv").write_text(header + "a@example.com\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"column 2002: the header name 'bad\\x00name' holds"):
        read_recipients(RecipientSource(path="r.csv"), tmp_path)
