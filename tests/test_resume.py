"""Crash and resume: SIGKILL the sending process mid-run, `mailcast resume` finishes the run,
and nobody whose row was marked sent gets a second copy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import text
from typer.testing import CliRunner

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP
from mailcast.cli import app
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign

MAILCAST = str(Path(sys.executable).parent / "mailcast")


class SlowHandler(CaptureHandler):
    """Takes a few milliseconds per message, so a kill lands in the middle of the run."""

    delay = 0.004

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        return await super().handle_DATA(smtp, session, envelope)


class SlowServer(CaptureServer):
    handler_class = SlowHandler


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_send_then_resume(tmp_path: Path, prefect_harness: None, pg_url: str) -> None:
    from prefect.settings import PREFECT_API_URL

    rows = people(1500)
    spec = write_campaign(
        tmp_path,
        rows,
        attachments=False,
        spec_extra={"connections": 2, "chunk_size": 300, "crash_window": "ledger"},
    )
    log = tmp_path / "send.log"
    with SlowServer() as server:
        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "MAILCAST_DATABASE_URL": pg_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [MAILCAST, "send", str(spec), "--send", "--smtp", server.url],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                _wait(lambda: len(server.messages) >= 400 or proc.poll() is not None, 180, "sends")
                assert proc.poll() is None, log.read_text()[-3000:]
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        at_kill = len(server.messages)

        ledger = Ledger(pg_url)
        run = next(r for r in ledger.runs() if r.campaign == "test-campaign")
        rows_at_kill = list(ledger.deliveries(run.id))
        sent_before = {r["address"] for r in rows_at_kill if r["status"] == "sent"}
        sending = {r["address"] for r in rows_at_kill if r["status"] == "sending"}
        with ledger.engine.connect() as conn:  # handed over: their messages may be at the server
            handed = set(
                conn.execute(
                    text(
                        "SELECT address FROM deliveries WHERE run_id = :r AND handed_at IS NOT NULL"
                    ),
                    {"r": run.id},
                ).scalars()
            )
        in_flight = sending & handed  # at most one per connection
        reserved = sending - handed  # claimed, nothing of them sent: resume sends them
        assert 0 < len(sent_before) < 1500, "the kill must land mid-run"
        assert run.status == "sending"

        result = CliRunner().invoke(
            app, ["resume", run.id[:8], "--smtp", server.url, "--db", pg_url]
        )
        assert result.exit_code == 0, result.output
        assert "resuming run" in result.output

    captured = Counter(m.rcpt_tos[0] for m in server.messages)
    final = {r["address"]: r for r in ledger.deliveries(run.id)}
    unknown = {a for a, r in final.items() if r["status"] == "unknown"}
    print(
        f"killed after {at_kill} captured; sent before kill {len(sent_before)}, in flight "
        f"{len(in_flight)}; after resume: captured {sum(captured.values())} for {len(captured)} "
        f"addresses, unknown {len(unknown)}"
    )
    # no recipient marked sent before the crash got a second copy
    assert all(captured[a] == 1 for a in sent_before)
    # nobody got two copies at all (the default policy does not re-send unknown rows)
    assert max(captured.values()) == 1
    # unknown rows are exactly those in flight at the kill (at most one per connection), and
    # they were not re-sent; rows only reserved at the kill were sent on resume
    assert unknown == in_flight
    assert len(in_flight) <= 2  # connections: 2
    assert all(captured[a] == 1 and final[a]["status"] == "sent" for a in reserved)
    # every other recipient was delivered, once, and is recorded as sent
    everyone = {r["email"] for r in rows}
    assert {a for a, r in final.items() if r["status"] == "sent"} == everyone - unknown
    assert set(captured) - unknown == everyone - unknown
    assert ledger.run(run.id).status == "completed"
    if in_flight:
        assert "unknown" in result.output  # the summary reports them


@pytest.mark.slow
def test_two_concurrent_resumes_send_each_row_once(
    tmp_path: Path, prefect_harness: None, pg_url: str
) -> None:
    from prefect.settings import PREFECT_API_URL

    from mailcast.recipients import Recipient
    from mailcast.spec import load_spec

    rows = people(2000)
    spec = load_spec(
        write_campaign(
            tmp_path, rows, attachments=False, spec_extra={"connections": 3, "chunk_size": 100}
        )
    )
    ledger = Ledger(pg_url)
    run_id = ledger.create_run(
        spec.name, spec.model_dump(mode="json"), dry_run=False, transport="test"
    )
    ledger.plan(
        run_id,
        [Recipient(i + 2, r["email"], r, None, r["email"]) for i, r in enumerate(rows)],
        list(rows[0]),
    )
    ledger.set_run(run_id, status="sending")
    with SlowServer() as server:
        env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "MAILCAST_DATABASE_URL": pg_url,
        }
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        procs = [
            subprocess.Popen(
                [MAILCAST, "resume", run_id, "--smtp", server.url],
                env=env,
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            for log in logs
        ]
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    captured = Counter(m.rcpt_tos[0] for m in server.messages)
    print(f"two resumes: {sum(captured.values())} messages for {len(captured)} addresses, "
          f"{server.connections} connections")  # fmt: skip
    assert max(captured.values()) == 1
    assert set(captured) == {r["email"] for r in rows}
    assert ledger.counts(run_id)["sent"] == 2000
