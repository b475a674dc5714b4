"""The ``mailcast`` command line, as a user sees it: output text, exit codes, and what a command
leaves behind (files, the ledger, messages received by a real SMTP server on loopback).

Click >= 8.2: ``CliRunner`` keeps stderr apart (``result.stderr``) and ``result.output`` holds
both streams interleaved, the way a terminal shows them.
"""

from __future__ import annotations

import csv
import email
import email.policy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mailcast.cli import app
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = REPO / "deployments" / "example" / "campaign.yaml"

runner = CliRunner()


def invoke(*args: Any) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'l.sqlite3'}"


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit 2, one `error:` line on stderr naming the place, a hint, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), result.stderr
    assert any(line.startswith("hint: ") for line in lines[1:]), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, result.stderr)
    return lines[0]


def campaign_rows() -> list[dict[str, str]]:
    rows = people(5)
    rows.append(dict(rows[1], email="PERSON1@Example.com"))  # data row 6 (line 7): a duplicate
    rows.append(dict(rows[2], email="not an address"))  # line 8
    return rows


# -- validate ---------------------------------------------------------------------------------


def test_validate_counts_and_lists_rejected_rows(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path, campaign_rows())
    result = invoke("validate", spec)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    out = result.stdout
    assert "test-campaign: 7 rows" in out
    assert "to send: 5" in out and "rejected: 2" in out
    assert "templates ok: subject, body.html.j2, body.txt.j2" in out
    lines = out.splitlines()
    dup = next(line for line in lines if "person1@example.com" in line.lower())
    assert dup.split()[0] == "7" and "duplicate of row 3" in dup
    bad = next(line for line in lines if "not an address" in line)
    assert bad.split()[0] == "8" and "invalid address" in bad


def test_validate_show_limits_the_listing(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path, campaign_rows())
    result = invoke("validate", spec, "--show", "1")
    assert result.exit_code == 0, result.output
    assert "person1@example.com" in result.stdout.lower()
    assert "not an address" not in result.stdout
    assert "and 1 more (--show N)" in result.stdout


HTML_UNDEFINED_LINE_3 = (
    "<html><body>\n<h1>Hello {{ first_name }}</h1>\n<p>{{ favourite_colour }}</p>\n</body></html>\n"
)
TEXT_SYNTAX_LINE_2 = "Hello {{ first_name }},\nyour code is {{ code }.\n"


@pytest.mark.parametrize(
    ("kwargs", "where", "what"),
    [
        ({"html": HTML_UNDEFINED_LINE_3}, "body.html.j2:3", "favourite_colour"),
        ({"text": TEXT_SYNTAX_LINE_2}, "body.txt.j2:2", ""),
    ],
    ids=["undefined-variable", "syntax-error"],
)
def test_validate_template_errors_name_file_and_line(
    tmp_path: Path, kwargs: dict[str, str], where: str, what: str
) -> None:
    spec = write_campaign(tmp_path, campaign_rows(), **kwargs)
    result = invoke("validate", spec)
    line = assert_user_error(result, where, what)
    assert line.startswith(f"error: {where}: ")
    assert result.stdout == ""


def test_send_with_template_error_stops_before_prefect_and_smtp(
    tmp_path: Path, smtp_server: Any
) -> None:
    """Acceptance: a broken template refuses the send before Prefect is even imported."""
    spec = write_campaign(tmp_path, campaign_rows(), html=HTML_UNDEFINED_LINE_3)
    db = sqlite_url(tmp_path)
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mailcast.cli import app\n"
        "r = CliRunner().invoke(app, sys.argv[1:])\n"
        "sys.stdout.write(r.output)\n"
        "print('prefect imported:', 'prefect' in sys.modules, 'exit:', r.exit_code)\n"
    )
    argv = ["send", str(spec), "--send", "--smtp", smtp_server.url, "--db", db]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "body.html.j2:3" in proc.stdout
    assert proc.stdout.rstrip().endswith("prefect imported: False exit: 2"), proc.stdout
    assert smtp_server.messages == []
    assert Ledger(db).runs() == []
    listing = invoke("runs", "--db", db)
    assert listing.exit_code == 0, listing.output
    assert "test-campaign" not in listing.stdout


# -- blocking input errors ------------------------------------------------------------------


def test_missing_spec_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = assert_user_error(invoke("validate", missing), str(missing))
    assert "no such file" in line


def test_spec_with_unknown_field(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path, campaign_rows(), spec_extra={"colour": "red"})
    assert_user_error(invoke("validate", spec), str(spec), "`colour`")


def test_missing_email_column(tmp_path: Path) -> None:
    rows = [{("mail" if k == "email" else k): v for k, v in r.items()} for r in people(3)]
    spec = write_campaign(tmp_path, rows)
    line = assert_user_error(invoke("validate", spec), "recipients.csv")
    assert "email" in line
    for column in ("mail", "first_name", "last_name", "city", "code"):
        assert column in line


def test_missing_attachment(tmp_path: Path) -> None:
    spec = write_campaign(
        tmp_path, campaign_rows(), spec_extra={"attachments": ["files/missing.pdf"]}
    )
    assert_user_error(invoke("validate", spec), "files/missing.pdf")


def test_send_without_smtp_hints_at_smtp_option(tmp_path: Path, smtp_server: Any) -> None:
    spec = write_campaign(tmp_path, campaign_rows())
    result = invoke("send", spec, "--send", "--db", sqlite_url(tmp_path))
    assert_user_error(result)
    hint = next(line for line in result.stderr.splitlines() if line.startswith("hint: "))
    assert "--smtp" in hint
    assert smtp_server.messages == []
    assert Ledger(sqlite_url(tmp_path)).runs() == []


def test_report_for_unknown_run(tmp_path: Path) -> None:
    result = invoke("report", "no-such-run", "--db", sqlite_url(tmp_path))
    assert_user_error(result, "no-such-run")
    assert "mailcast runs" in result.stderr


# -- preview and init ---------------------------------------------------------------------------


def test_preview_writes_eml_and_html(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path / "c", campaign_rows())
    out_dir = tmp_path / "preview"
    result = invoke("preview", spec, "--limit", 2, "--out", out_dir)
    assert result.exit_code == 0, result.output
    for i in range(2):
        assert f"person{i}@example.com" in result.stdout
        assert f"Fïrst{i}, your code C00000{i}" in result.stdout
    assert "person2@example.com" not in result.stdout
    emls = sorted(out_dir.glob("*.eml"))
    htmls = sorted(out_dir.glob("*.html"))
    assert len(emls) == 2 and len(htmls) == 2
    msg = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "Fïrst0, your code C000000"
    assert "person0@example.com" in str(msg["To"])
    assert msg["From"] == "Test Sender <sender@mailcast.example>"
    assert [a.get_filename() for a in msg.iter_attachments()] == ["doc.pdf"]  # type: ignore[attr-defined]
    assert "Hello Fïrst0 Låst0" in htmls[0].read_text(encoding="utf-8")


def test_init_writes_a_campaign_that_validates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "new"
    result = invoke("init", target)
    assert result.exit_code == 0, result.output
    assert (target / "campaign.yaml").is_file()
    assert list((target / "templates").glob("*.j2"))
    assert list((target / "data").iterdir())

    before = (target / "campaign.yaml").read_bytes()
    (target / "campaign.yaml").write_text(before.decode() + "\n# edited\n", encoding="utf-8")
    again = invoke("init", target)
    line = assert_user_error(again, str(target))
    assert "refusing to overwrite" in line
    assert (target / "campaign.yaml").read_text(encoding="utf-8").endswith("# edited\n")

    checked = invoke("validate", target / "campaign.yaml")
    assert checked.exit_code == 0, checked.output
    assert "to send:" in checked.stdout


# -- send, runs, report (one real flow run, shared by the tests below) -----------------------


FORMULA = '=HYPERLINK("http://evil.example/","open me")'
HOSTILE_ROWS = [  # rejected, but kept verbatim in the ledger: reports must survive them
    dict(people(1)[0], email=FORMULA),  # line 9
    dict(people(1)[0], email="tab\x0bbed@example.com"),  # line 10: a control character
]


@dataclass
class DryRun:
    folder: Path
    db: str
    outbox: Path
    result: Result
    run_id: str
    captured: list[Any]
    rows: list[dict[str, str]]


@pytest.fixture(scope="module")
def dry_run(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DryRun]:
    """`mailcast send SPEC` (a dry run) once, with an SMTP server configured that must stay idle."""
    from mailcast.capture import CaptureServer

    folder = tmp_path_factory.mktemp("cli-send")
    rows = campaign_rows() + HOSTILE_ROWS
    spec = write_campaign(folder / "campaign", rows)
    db = sqlite_url(folder)
    outbox = folder / "outbox"
    with pytest.MonkeyPatch.context() as mp, CaptureServer() as server:
        for key in list(os.environ):
            if key.startswith("MAILCAST_") and key != "MAILCAST_TEST_PG":
                mp.delenv(key)
        mp.setenv("MAILCAST_DATA_DIR", str(folder / "data"))
        result = invoke("send", spec, "--db", db, "--outbox", outbox, "--smtp", server.url)
        ledger_runs = Ledger(db).runs()
        run_id = ledger_runs[0].id if ledger_runs else ""
        yield DryRun(folder, db, outbox, result, run_id, list(server.messages), rows)


def test_send_dry_run(dry_run: DryRun) -> None:
    result = dry_run.result
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert dry_run.run_id and f"run {dry_run.run_id}" in result.stdout
    assert "dry run" in result.stdout
    assert "sent 5" in result.stdout and "skipped 4" in result.stdout
    assert "(total 9)" in result.stdout
    assert dry_run.captured == []
    emls = sorted(dry_run.outbox.rglob("*.eml"))
    assert len(emls) == 5
    rcpts = {
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["To"]
        .addresses[0]
        .addr_spec
        for p in emls
    }
    assert rcpts == {f"person{i}@example.com" for i in range(5)}
    run = Ledger(dry_run.db).run(dry_run.run_id)
    assert run.dry_run is True and run.status == "completed"


def test_runs_lists_the_run(dry_run: DryRun) -> None:
    result = invoke("runs", "--db", dry_run.db)
    assert result.exit_code == 0, result.output
    assert dry_run.run_id in result.stdout
    line = next(line for line in result.stdout.splitlines() if dry_run.run_id in line)
    assert "test-campaign" in line and "completed" in line and "dry" in line


def read_report(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    if fmt == "json":
        return list(json.loads(path.read_text(encoding="utf-8")))
    if fmt == "xlsx":
        from openpyxl import load_workbook

        ws = load_workbook(path, read_only=True)["deliveries"]
        header, *body = [[(c.value, c.data_type) for c in r] for r in ws.iter_rows()]
        formulas = [value for r in body for value, kind in r if kind == "f"]
        assert formulas == []  # recipient data must never become a live formula
        return [dict(zip([h for h, _ in header], [v for v, _ in r], strict=True)) for r in body]
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


@pytest.mark.parametrize("fmt", ["csv", "json", "xlsx", "parquet"])
def test_report_formats(dry_run: DryRun, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"report.{fmt}"
    result = invoke("report", dry_run.run_id, "--format", fmt, "--out", target, "--db", dry_run.db)
    assert result.exit_code == 0, result.output
    assert f"wrote 9 rows to {target}" in result.stdout
    rows = read_report(target, fmt)
    assert len(rows) == len(dry_run.rows) == 9
    by_row = {int(r["row_no"]): r for r in rows}  # data lines 2..10 of the CSV
    assert sorted(by_row) == list(range(2, 11))
    for i in range(5):
        assert by_row[i + 2]["address"] == f"person{i}@example.com"
        assert by_row[i + 2]["status"] == "sent"
        assert by_row[i + 2]["message_id"]
    assert by_row[7]["address"].lower() == "person1@example.com"  # the domain is normalized
    assert (by_row[7]["status"], by_row[7]["reason"]) == ("skipped", "duplicate of row 3")
    assert by_row[8]["address"] == "not an address"
    for n in (8, 9, 10):
        assert by_row[n]["status"] == "skipped"
        assert by_row[n]["reason"].startswith("invalid address")
    # text, not a live formula: xlsx types it as text, csv prefixes it with ' (--raw: as is)
    assert by_row[9]["address"] == ("'" + FORMULA if fmt == "csv" else FORMULA)
    # openpyxl cannot store control characters: the xlsx shows them escaped
    assert by_row[10]["address"] == (
        "tab\\x0bbed@example.com" if fmt == "xlsx" else "tab\x0bbed@example.com"
    )
    fields = by_row[2]["fields"]
    fields = fields if isinstance(fields, dict) else json.loads(fields)
    assert fields["first_name"] == "Fïrst0" and fields["city"] == "Paris"


def test_report_unknown_format(dry_run: DryRun, tmp_path: Path) -> None:
    result = invoke("report", dry_run.run_id, "--format", "pdf", "--db", dry_run.db)
    assert_user_error(result, "--format")


# -- speed: commands that run no flow never import Prefect ---------------------------------------


@pytest.mark.serial  # a timing figure
def test_validate_example_is_fast_and_prefect_free() -> None:
    exe = Path(sys.executable).with_name("mailcast")
    cmd = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from mailcast.cli import main; main()"]
    )
    started = time.monotonic()
    proc = subprocess.run(
        [*cmd, "validate", str(EXAMPLE_SPEC.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "spring-newsletter" in proc.stdout
    assert "prefect" not in (proc.stdout + proc.stderr).lower()
    assert elapsed < 3.0, f"validate took {elapsed:.1f}s"

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from mailcast.cli import app\n"
        f"r = CliRunner().invoke(app, ['validate', {str(EXAMPLE_SPEC)!r}])\n"
        "print('prefect' in sys.modules, r.exit_code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "False 0", proc.stdout + proc.stderr
