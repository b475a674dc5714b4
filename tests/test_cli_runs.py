"""The CLI and the runs it starts (issue 11): resume and retry reach the server the run was sent
through (§2), no secret becomes a flow parameter (§4), and a wrong SMTP server or block is one
line within seconds, before Prefect (§5). Real servers: aiosmtpd on loopback, Postgres, Prefect.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from mailcast.capture import CaptureServer
from mailcast.cli import app
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign
from tests.smtp_faults import FaultyServer, Rule

USER = "newsletter"
PASSWORD = "s3cret-Passw0rd-9f2c"  # a marker: must be found nowhere
runner = CliRunner()


def invoke(*args: Any) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert lines[-2] == errors[0] and lines[-1].startswith("hint: "), stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, stderr)
    assert "Traceback" not in stderr and "ValueError" not in stderr


# -- §2: resume and retry know the run's server ------------------------------------------------


def test_retry_and_resume_use_the_server_the_run_was_sent_through(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCAST_SMTP_PASSWORD", PASSWORD)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(
        tmp_path / "c", people(6), attachments=False,
        spec_extra={"max_attempts": 1, "connections": 1},
    )  # fmt: skip
    greylisted = "person2@example.com"
    with FaultyServer(
        Rule("RCPT", reply="451 4.7.1 Greylisted, try later", address=greylisted),
        username=USER,
        password=PASSWORD,
    ) as server:
        url = f"smtp://{USER}@127.0.0.1:{server.port}?security=none"
        sent = invoke("send", spec, "--send", "--smtp", url, "--db", db)
        assert sent.exit_code == 0, sent.output
        run = Ledger(db).runs()[0]
        # recorded structured and password-free
        recorded = json.loads(run.transport or "")
        assert recorded["url"] == url and recorded["outbox"] is None
        assert PASSWORD not in (run.transport or "")
        assert f"via: 127.0.0.1:{server.port}" in sent.stdout

        server.rules.clear()  # the greylisting has passed
        retried = invoke("retry", run.id, "--failed", "--db", db)  # no --smtp
        assert retried.exit_code == 0, retried.output
        assert f"via the run's transport: 127.0.0.1:{server.port}" in retried.stdout
        assert "sent 6" in retried.stdout

        resumed = invoke("resume", run.id[:8], "--db", db)  # nothing left: still no refusal
        assert resumed.exit_code == 0, resumed.output
    copies = Counter(m.rcpt_tos[0] for m in server.messages)
    assert copies[greylisted] == 1 and len(copies) == 6 and max(copies.values()) == 1
    assert Ledger(db).counts(run.id)["sent"] == 6


# -- §4: the ledger's password never becomes a flow parameter ---------------------------------


def test_no_flow_parameter_holds_the_ledger_password(
    prefect_harness: None, tmp_path: Path, pg_url: str, smtp_server: Any
) -> None:
    from prefect.client.orchestration import get_client

    scheme, rest = pg_url.split("://", 1)
    user, host = rest.split("@", 1)
    secret_db = f"{scheme}://{user}:{PASSWORD}@{host}"  # trust auth: any password is accepted
    spec = write_campaign(tmp_path / "c", people(3), attachments=False)
    result = invoke("send", spec, "--send", "--smtp", smtp_server.url, "--db", secret_db)
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert os.environ.get("MAILCAST_DATABASE_URL") is None  # the CLI's own process, restored
    run = Ledger(pg_url).runs()[0]
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(limit=200)
    [flow_run] = [r for r in flow_runs if r.parameters.get("run_id") == run.id]
    params = json.dumps(flow_run.parameters)
    assert flow_run.state is not None and flow_run.state.is_completed()
    assert "database_url" not in flow_run.parameters
    assert PASSWORD not in params, params
    assert len(smtp_server.messages) == 3


# -- §5: failing fast, failing clearly ----------------------------------------------------------


def run_cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[Any, float]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILCAST_")}
    environ.update(MAILCAST_DATA_DIR=str(folder / "data"), PREFECT_API_URL="http://127.0.0.1:9")
    environ.update(env or {})
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "mailcast", *args],
        cwd=folder,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc, time.monotonic() - started


def test_send_to_a_refused_port_fails_in_seconds_before_prefect(tmp_path: Path) -> None:
    """Nothing listens: one line naming host:port with a hint, exit 2, in seconds, and no
    Prefect (its API URL points nowhere: a flow start would hang there)."""
    spec = write_campaign(tmp_path / "c", people(3), attachments=False)
    port = free_port()
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    proc, elapsed = run_cli(
        tmp_path, "send", str(spec), "--send", "--smtp", f"smtp://127.0.0.1:{port}", "--db", db
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_line_error(proc.stderr, f"127.0.0.1:{port}", "cannot connect")
    assert "prefect" not in (proc.stdout + proc.stderr).lower()
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert Ledger(db).runs() == []  # nothing planned


def test_send_with_a_wrong_password_fails_in_seconds_before_prefect(tmp_path: Path) -> None:
    spec = write_campaign(tmp_path / "c", people(3), attachments=False)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with CaptureServer(username=USER, password=PASSWORD) as server:
        url = f"smtp://{USER}@127.0.0.1:{server.port}?security=none"
        proc, elapsed = run_cli(
            tmp_path, "send", str(spec), "--send", "--smtp", url, "--db", db,
            env={"MAILCAST_SMTP_PASSWORD": "not-the-password"},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_line_error(proc.stderr, f"127.0.0.1:{server.port}", "authentication failed")
    assert "MAILCAST_SMTP_PASSWORD" in proc.stderr.splitlines()[-1]  # the hint
    assert "prefect" not in (proc.stdout + proc.stderr).lower()
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert server.messages == [] and Ledger(db).runs() == []


def test_a_missing_smtp_block_is_one_line_not_a_traceback(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.campaign import send_campaign

    from mailcast.errors import TransportError
    from mailcast.spec import load_spec

    spec = write_campaign(tmp_path / "c", people(3), attachments=False)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    name = f"no-such-block-{uuid.uuid4().hex[:6]}"
    result = invoke("send", spec, "--send", "--smtp-block", name, "--db", db)
    assert result.exit_code == 2, result.output
    assert_one_line_error(
        result.stderr, f"smtp block {name}", f"no saved SMTP block named {name!r}"
    )
    assert "prefect block ls" in result.stderr

    # a flow run (a deployment) fails with the same message as its state
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
    state = send_campaign(spec=load_spec(spec), dry_run=False, smtp_block=name, return_state=True)
    assert state.is_failed()
    assert state.message is not None and "\n" not in state.message
    assert f"no saved SMTP block named {name!r}" in state.message
    with pytest.raises(TransportError):
        state.result()


def test_commands_without_a_flow_never_import_prefect(tmp_path: Path) -> None:
    """runs, report, db, suppress, init, validate and preview answer without Prefect."""
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from mailcast.cli import app\n"
        "r = CliRunner()\n"
        "codes = [r.invoke(app, a).exit_code for a in json.loads(sys.argv[1])]\n"
        "print(codes, 'prefect' in sys.modules)\n"
    )
    commands = [
        ["db", "upgrade", "--db", db], ["runs", "--db", db], ["suppress", "list", "--db", db],
        ["report", "no-such-run", "--db", db], ["init", str(tmp_path / "x")],
        ["validate", str(tmp_path / "x" / "campaign.yaml")],
        ["preview", str(tmp_path / "x" / "campaign.yaml"), "--out", str(tmp_path / "p")],
    ]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MAILCAST_")}
    environ["MAILCAST_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(commands)],
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.stdout.strip() == "[0, 0, 0, 2, 0, 0, 0] False", proc.stdout + proc.stderr
