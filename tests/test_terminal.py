"""Recipient data reaches the terminal as text (issue 11 §4): control characters (an OSC
sequence that retitles the window, a bell) print as visible escapes and Rich markup such as
``[link=...]`` prints literally, through ``validate``, ``preview``, the run summary and
``suppress``, in the test runner and in a real process whose output Rich treats as a terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from mailcast.cli import app
from tests.campaigns import people, write_campaign

REPO = Path(__file__).resolve().parents[1]
OSC = "\x1b]0;owned\x07"  # sets the terminal's title
LINK = "[link=https://evil.example/]click me[/link]"
runner = CliRunner()


def hostile_rows() -> list[dict[str, str]]:
    rows = people(3)
    rows[0]["first_name"] = f"{LINK}{OSC}"  # valid row: the subject carries it
    rows[1]["email"] = f"{OSC}{LINK}@example.com"  # rejected: the address is listed
    rows.append(dict(people(1)[0], email=f"x{LINK}@exa\x1b[31mmple.com"))
    return rows


def assert_safe(text: str) -> None:
    assert "\x07" not in text and "\x1b]" not in text, repr(text)
    assert "\x1b[31m" not in text, repr(text)
    assert "\\x1b]0;owned\\x07" in text, text  # visible, not interpreted


def shown(needle: str, output: str) -> bool:
    """Whether ``needle`` is printed, as text, in ``output`` (Rich may wrap it at any width)."""
    return "".join(needle.split()) in "".join(output.split())


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_validate_and_preview_print_data_as_text(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path / "c", hostile_rows())
    result = invoke("validate", spec)
    assert result.exit_code == 0, result.output
    assert_safe(result.stdout)
    assert shown(f"{LINK}@example.com", result.stdout)  # the markup is shown, not rendered

    result = invoke("preview", spec, "--out", tmp_path / "p", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert_safe(result.stdout)
    assert shown(LINK, result.stdout)


def test_suppress_import_lists_invalid_lines_as_text(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text(f"ok@example.com\n{OSC}{LINK}\n", encoding="utf-8")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    result = invoke("suppress", "import", listing, "--db", db)
    assert result.exit_code == 0, result.output
    assert "\x07" not in result.stdout and "\x1b]" not in result.stdout
    assert shown(LINK, result.stdout)


def test_a_real_terminal_gets_no_sequences_from_data(tmp_path: Path) -> None:
    """FORCE_COLOR: Rich writes as to a terminal (styles, hyperlinks); data still prints as
    text: no OSC sequence, the markup shown literally."""
    spec = write_campaign(tmp_path / "c", hostile_rows())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCAST_")}
    env.update(FORCE_COLOR="1", COLUMNS="200", MAILCAST_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run(
        [sys.executable, "-m", "mailcast", "validate", str(spec)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stdout  # a terminal indeed: Rich styled its own text
    assert_safe(proc.stdout)
    assert "[link=https://evil.example/]" in proc.stdout


def test_run_summary_prints_data_as_text_and_groups_reasons(
    prefect_harness: None, tmp_path: Path
) -> None:
    """A real send where the server's replies carry terminal sequences and markup, and name the
    recipient: the summary prints them as text, one line per reason with its count (issue 11
    §4 and §5); the addresses are in the report, not in the summary."""
    from tests.smtp_faults import FaultyServer, Rule

    rows = people(8)
    spec = write_campaign(tmp_path / "c", rows, attachments=False)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    rules = [Rule("RCPT", reply=f"550 5.1.1 {OSC}{LINK} no", address="person0@example.com")]
    rules += [
        Rule("RCPT", reply=f"550 5.1.1 <person{i}@example.com>: Recipient address rejected",
             address=f"person{i}@example.com")
        for i in range(1, 6)
    ]  # fmt: skip
    with FaultyServer(*rules) as server:
        result = invoke("send", spec, "--send", "--smtp", server.url, "--db", db)
    assert result.exit_code == 0, result.output
    assert "sent 2" in result.stdout and "failed 6" in result.stdout
    assert "\x07" not in result.output and "\x1b" not in result.output
    assert shown(LINK, result.stdout)  # the markup as text
    assert "\\x1b]0;owned\\x07" in result.stdout
    grouped = [line for line in result.stdout.splitlines() if "Recipient address rejected" in line]
    assert len(grouped) == 1, result.stdout
    assert grouped[0].split()[:2] == ["failed", "5"]
    assert "<address>" in grouped[0]
    assert not any(f"person{i}@" in result.stdout for i in range(1, 6))
    assert "mailcast report" in result.stdout
