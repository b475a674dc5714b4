"""Hostile SMTP servers: one test per fault of issue 5, each asserting the ledger's final state
(status, reason, attempts, SMTP code per recipient) and what the server actually accepted.

The engine is driven directly (``mailcast.engine.chunk.send_chunk`` with a real ``Ledger`` on SQLite and
the real SMTP transport against the fault-injecting server in ``tests/smtp_faults.py``); the
last tests go through the CLI and the Prefect flow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.engagement import suppression
from mailcast.engine.chunk import send_chunk
from mailcast.engine.control import RunControl
from mailcast.engine.loop import ChunkResult
from mailcast.engine.summary import finish_run, summarize_run
from mailcast.errors import AuthError, RunStopped, TlsError
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import plan_rows
from mailcast.recipients.sources import read_recipients
from mailcast.recipients.validate import validate_recipients
from mailcast.spec import CampaignSpec, load_spec
from mailcast.transport.factory import Target
from tests.campaigns import people, write_campaign
from tests.ledger_rows import chunk_ranges
from tests.smtp_faults import Event, FaultyServer, Rule

FAST = {"retry_base_seconds": 0.01, "max_attempts": 3}
PASSWORD = "Fault-Test-Pa55word"


@dataclass
class Run:
    """A planned run on SQLite, and how to send it through the engine."""

    spec: CampaignSpec
    db: str
    run_id: str
    url: str
    addresses: list[str]

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.db)

    def target(self, **options: str) -> Target:
        url = self.url + "".join(f"&{k}={v}" for k, v in options.items())
        return Target(smtp_url=url)

    def send(
        self, control: RunControl | None = None, chunks: int = 1, **options: str
    ) -> ChunkResult:
        """Send every pending row, in ``chunks`` threads sharing one RunControl."""
        control = control or RunControl.for_spec(self.spec)
        size = -(-len(self.addresses) // chunks)
        ranges = chunk_ranges(self.ledger, self.run_id, size)
        target = self.target(**options)
        total = ChunkResult()
        with ThreadPoolExecutor(len(ranges) or 1) as pool:
            futures = [
                pool.submit(send_chunk, self.spec, self.run_id, r, self.db, target, control=control)
                for r in ranges
            ]
            errors = []
            for future in futures:
                try:
                    total.add(future.result())
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]
        return total

    def rows(self) -> dict[str, dict[str, Any]]:
        """The report's rows by address, with the SMTP stage each recorded reply answers."""
        from sqlalchemy import select

        from mailcast.ledger.models import Delivery

        query = select(Delivery.address, Delivery.smtp_stage).where(Delivery.run_id == self.run_id)
        with self.ledger.engine.connect() as conn:
            stages = dict(conn.execute(query).tuples().all())
        return {
            r["address"]: {**r, "smtp_stage": stages[r["address"]]}
            for r in self.ledger.deliveries(self.run_id)
        }

    def finish(self) -> str:
        """Close the run like the flow does; every row must be accounted for."""
        summary = finish_run(self.ledger, self.run_id)
        assert summary.counts["sending"] == 0, summary.counts
        assert summary.total == len(self.addresses)
        assert summary.counts["pending"] == 0 or summary.status == "paused"
        return summary.status


def plan(
    folder: Path,
    server: CaptureServer,
    n: int = 10,
    *,
    addresses: list[str] | None = None,
    url: str | None = None,
    expect_skipped: bool = False,
    db: str | None = None,
    suppressed: dict[str, str] | None = None,
    **spec_extra: Any,
) -> Run:
    """Plan a run (in ``folder``'s own SQLite ledger, or ``db``), validated against the
    ``suppressed`` addresses (key → reason)."""
    rows = people(n)
    if addresses is not None:
        rows = [dict(r, email=a) for r, a in zip(people(len(addresses)), addresses, strict=True)]
    spec_path = write_campaign(
        folder, rows, attachments=False, spec_extra={**FAST, "chunk_size": 1000, **spec_extra}
    )
    spec = load_spec(spec_path)
    db = db or f"sqlite:///{folder / 'ledger.sqlite3'}"
    ledger = Ledger(db)
    url = url or server.url
    table = validate_recipients(
        read_recipients(spec.recipients, spec.base_dir), suppressed=suppressed or {}
    )
    assert expect_skipped or not table.rejected, [r.reason for r in table.rejected]
    run_id = plan_rows(ledger, spec, table.rows, table.columns, Target(smtp_url=url))
    return Run(spec, db, run_id, url, [str(r["email"]) for r in rows])


def sent_once(run: Run, server: CaptureServer) -> None:
    """Every recipient sent, accepted exactly once by the server."""
    rows = run.rows()
    assert {a: r["status"] for a, r in rows.items()} == dict.fromkeys(run.addresses, "sent")
    assert all(r["reason"] is None and r["smtp_code"] == 250 for r in rows.values())
    assert {a: server.accepted_count(a) for a in run.addresses} == dict.fromkeys(run.addresses, 1)
    assert len(server.messages) == len(run.addresses)
    assert run.finish() == "completed"


def attempts(run: Run) -> dict[str, int]:
    return {a: r["attempts"] for a, r in run.rows().items()}


# -- connect ------------------------------------------------------------------------------------


def test_421_on_connect_waits_and_connects(tmp_path: Path) -> None:
    with FaultyServer(Rule("CONNECT", reply="421 4.3.2 Too busy, try later", times=3)) as server:
        run = plan(tmp_path, server)
        control = RunControl.for_spec(run.spec)
        run.send(control)
    sent_once(run, server)
    assert set(attempts(run).values()) == {1}  # a busy greeting is no message's attempt
    assert server.connections == 4
    assert control.throttled == 3  # and a "slow down" for the whole run


# -- temporary replies ------------------------------------------------------------------------

TEMPORARY = {
    421: "4.7.0 Slow down, closing",
    451: "4.3.0 Try again later",
    452: "4.3.1 Insufficient system storage",
    454: "4.7.0 Temporary failure",
}


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA_CMD", "DATA"])
@pytest.mark.parametrize("code", sorted(TEMPORARY))
def test_temporary_reply_is_retried(tmp_path: Path, stage: Any, code: int) -> None:
    victim = "person3@example.com"
    reply = f"{code} {TEMPORARY[code]}"
    # MAIL carries only the sender: the 4th MAIL command is the victim's (one thread, in order)
    where = {"nth": 4} if stage == "MAIL" else {"address": victim}
    rule = Rule(stage, reply=reply, times=1, **where)  # type: ignore[arg-type]
    with FaultyServer(rule) as server:
        run = plan(tmp_path, server, 8)
        control = RunControl.for_spec(run.spec)
        result = run.send(control)
    sent_once(run, server)
    tries = attempts(run)
    assert rule.fired == 1
    if code == 421 and stage == "MAIL":
        # on a connection that carried messages: taken for a per-connection limit, sent again
        # at once on a fresh connection (no attempt used, no slow-down)
        assert tries == dict.fromkeys(run.addresses, 1)
        assert control.throttled == 0
    else:
        assert tries == {**dict.fromkeys(run.addresses, 1), victim: 2}
        assert result.retried == 1
        assert control.throttled == (1 if code in (421, 451, 454) else 0)
    # 421 closes the connection; other refusals leave it usable
    assert server.connections == (2 if code == 421 else 1)


def test_temporary_failure_keeps_the_last_reply_then_gives_up(tmp_path: Path) -> None:
    victim = "person2@example.com"
    rule = Rule("RCPT", reply="452 4.2.2 Mailbox full", address=victim)
    with FaultyServer(rule) as server:
        run = plan(tmp_path, server, 5)
        result = run.send()
    row = run.rows()[victim]
    assert row["status"] == "failed"
    assert row["reason"] == "temporary failure after 3 attempts: 452 4.2.2 Mailbox full"
    assert (row["attempts"], row["smtp_code"], row["smtp_reply"]) == (3, 452, "4.2.2 Mailbox full")
    assert server.attempts("RCPT", victim) == 3
    assert server.accepted_count(victim) == 0
    assert len(server.messages) == 4
    assert result.reasons == {"temporary failure": 1}
    assert run.finish() == "completed"


def test_slow_down_holds_back_every_thread_of_the_run(tmp_path: Path) -> None:
    """A 451 to one thread pauses the other threads too (the gate is run-wide)."""
    base = 0.4
    times: list[tuple[float, str]] = []
    lock = threading.Lock()

    def log_data(event: Event) -> bool:
        with lock:
            times.append((time.monotonic(), event.addresses[0]))
        return False

    victim = "person5@example.com"
    rules = [
        Rule("RCPT", reply="451 4.7.1 Slow down please", address=victim, times=1),
        Rule("DATA", when=log_data),
        Rule("DATA", delay=0.02),  # a server that takes its time: both threads overlap
    ]
    with FaultyServer(*rules) as server:
        run = plan(tmp_path, server, 40, retry_base_seconds=base)
        throttled_at: list[float] = []
        control = RunControl.for_spec(run.spec)
        real = control.throttle

        def spy(why: str) -> float:
            throttled_at.append(time.monotonic())
            return real(why)

        control.throttle = spy  # type: ignore[method-assign]
        run.send(control, chunks=2)
    sent_once(run, server)
    (t0,) = throttled_at
    # after the 451, no message of either thread was accepted for at least base/2 (the jitter)
    after = [t for t, _ in times if t > t0 + 0.03]  # the other thread's message in progress
    assert after, times
    assert min(after) - t0 >= base / 2 - 0.01
    other_chunk = {a for t, a in times if t > t0} - {victim}
    assert other_chunk  # both threads went on afterwards


@pytest.mark.serial  # a timing figure
def test_retry_time_budget_makes_temporary_failures_final(tmp_path: Path) -> None:
    victim = "person1@example.com"
    rule = Rule("RCPT", reply="450 4.2.1 Mailbox busy", address=victim)
    with FaultyServer(rule) as server:
        run = plan(
            tmp_path, server, 4, retry_base_seconds=0.2, max_attempts=20, max_retry_seconds=0.5
        )
        control = RunControl.for_spec(run.spec)
        started = time.monotonic()
        run.send(control)
        took = time.monotonic() - started
    row = run.rows()[victim]
    assert row["status"] == "failed"
    assert row["reason"].startswith("temporary failure, not retried: the run's retry time (0.5s)")
    assert row["reason"].endswith(": 450 4.2.1 Mailbox busy")
    assert 2 <= row["attempts"] < 20
    assert row["smtp_code"] == 450
    assert took < 3
    assert 0.5 <= control.waited() < 1.5
    assert len(server.messages) == 3
    assert run.finish() == "completed"


# -- permanent rejections -----------------------------------------------------------------------


def test_permanent_rejections_are_final_and_never_retried(tmp_path: Path) -> None:
    rules = [
        Rule("RCPT", reply="550 5.1.1 No such user", address="person1@example.com"),
        Rule("RCPT", reply="553 5.1.3 Bad address syntax", address="person2@example.com"),
        Rule("DATA", reply="554 5.7.1 Looks like spam", address="person3@example.com"),
        Rule("MAIL", reply="553 5.7.1 Sender not allowed", nth=5, times=1),  # person4's MAIL
    ]
    with FaultyServer(*rules) as server:
        run = plan(tmp_path, server, 7)
        result = run.send()
    rows = run.rows()
    got = {a: (r["status"], r["reason"], r["attempts"], r["smtp_code"]) for a, r in rows.items()}
    assert got == {
        "person0@example.com": ("sent", None, 1, 250),
        "person1@example.com": (
            "failed", "hard bounce: 550 5.1.1 No such user (at RCPT)", 1, 550),
        "person2@example.com": (
            "failed", "hard bounce: 553 5.1.3 Bad address syntax (at RCPT)", 1, 553),
        "person3@example.com": ("failed", "rejected at DATA: 554 5.7.1 Looks like spam", 1, 554),
        "person4@example.com": ("failed", "rejected at MAIL: 553 5.7.1 Sender not allowed", 1, 553),
        "person5@example.com": ("sent", None, 1, 250),
        "person6@example.com": ("sent", None, 1, 250),
    }  # fmt: skip
    for address in ("person1@example.com", "person2@example.com", "person3@example.com"):
        assert server.attempts("RCPT", address) == 1  # never retried
        assert server.accepted_count(address) == 0
    assert len(server.messages) == 3
    assert server.connections == 1  # RSET kept the connection usable
    assert result.reasons == {"hard bounce": 2, "rejected 554": 1, "rejected 553": 1}
    assert run.finish() == "completed"
    reasons = {(s, r): n for s, r, n in run.ledger.reasons(run.run_id)}
    assert reasons[("failed", "hard bounce: 550 5.1.1 No such user (at RCPT)")] == 1


# -- dropped connections, timeouts ---------------------------------------------------------------


def test_drop_mid_data_resumes_from_the_first_unacknowledged_message(tmp_path: Path) -> None:
    """A connection lost while the message is still going out (before the final dot): nothing
    of it was accepted, it goes again; acknowledged messages are never sent again."""
    rules = [Rule("DATA_CMD", drop=True, nth=n) for n in (3, 7, 8)]
    with FaultyServer(*rules) as server:
        run = plan(tmp_path, server, 10)
        run.send()
    sent_once(run, server)
    order = [m.rcpt_tos[0] for m in server.messages]
    # the 3rd DATA (person2) dropped: person3.. continue on a new connection; the 7th and 8th
    # DATA (person6, then person7 on the next connection) dropped too
    assert order[:2] == ["person0@example.com", "person1@example.com"]
    assert set(order[-3:]) == {"person2@example.com", "person6@example.com", "person7@example.com"}
    dropped = {"person2@example.com", "person6@example.com", "person7@example.com"}
    assert attempts(run) == {a: 2 if a in dropped else 1 for a in run.addresses}
    assert server.connections == 4


LOST_REPLY = (
    "may have been delivered: the whole message was sent, the server's reply to it never came"
    " (connection lost during DATA: {})"
)


@pytest.mark.parametrize(
    ("rule", "options", "detail"),
    [
        # the server took the message, then the connection dropped before its reply
        (Rule("DATA", keep=True, drop=True, address="person2@example.com"), {}, "{}"),
        # the server took the message and never answers: the client times out
        (
            Rule("DATA", keep=True, delay=3, drop=True, address="person2@example.com"),
            {"timeout": "0.5"},
            "timed out",
        ),
    ],
    ids=["drop", "timeout"],
)
def test_a_lost_reply_to_data_is_unknown_and_resent_only_on_request(
    tmp_path: Path, rule: Rule, options: dict[str, str], detail: str
) -> None:
    """Issue 11: the server may have the message; sending it again would deliver a second copy.
    The row is `unknown` (like a row in flight at a crash), never retried by the run; a resume
    re-sends it only with --resend-unknown."""
    from mailcast.engine.resume import reopen_run

    lost = "person2@example.com"
    with FaultyServer(rule) as server:
        run = plan(tmp_path, server, 5, max_attempts=3)
        result = run.send(**options)
        rows = run.rows()
        assert server.accepted_count(lost) == 1  # exactly one copy
        assert (rows[lost]["status"], rows[lost]["attempts"]) == ("unknown", 1)
        assert rows[lost]["smtp_code"] is None and rows[lost]["smtp_stage"] == "DATA"
        reason = rows[lost]["reason"]
        assert reason.startswith(LOST_REPLY.split("{")[0]), reason
        if detail != "{}":
            assert reason == LOST_REPLY.format(detail)
        assert result.reasons == {"may have been delivered": 1}
        assert {a: r["status"] for a, r in rows.items() if a != lost} == dict.fromkeys(
            set(run.addresses) - {lost}, "sent"
        )
        assert run.finish() == "completed"  # no row left open: unknown is reported, not retried

        rule.times = rule.fired  # the server behaves from now on
        assert reopen_run(run.ledger, run.run_id) == {"unknown": 0, "reopened": 0}
        run.send(**options)
        assert server.accepted_count(lost) == 1  # resume without the flag: not sent again
        assert run.rows()[lost]["status"] == "unknown"

        assert reopen_run(run.ledger, run.run_id, resend_unknown=True)["reopened"] == 1
        run.send(**options)
        assert server.accepted_count(lost) == 2  # asked for: sent again
    assert run.rows()[lost]["status"] == "sent"
    assert len(server.messages) == 6
    assert run.finish() == "completed"


@pytest.mark.serial  # a timing figure
def test_a_reply_that_never_comes_times_out(tmp_path: Path) -> None:
    dead, lost = "person3@example.com", "person4@example.com"
    rules = [
        Rule("RCPT", delay=3, drop=True, address=dead),
        Rule("DATA", delay=3, drop=True, address=lost),  # after the whole message was sent
    ]
    with FaultyServer(*rules) as server:
        run = plan(tmp_path, server, 5, max_attempts=2)
        started = time.monotonic()
        run.send(timeout="0.5")
        took = time.monotonic() - started
    rows = run.rows()
    assert rows[dead]["status"] == "failed"
    assert rows[dead]["reason"] == (
        "temporary failure after 2 attempts: connection lost during RCPT: timed out"
    )
    assert (rows[dead]["attempts"], rows[dead]["smtp_stage"]) == (2, "RCPT")
    # no reply to the end of DATA: the server may have the message; not `failed` (`mailcast
    # retry --failed` would send it again) and not retried, but explicitly unknown
    assert (rows[lost]["status"], rows[lost]["attempts"]) == ("unknown", 1)
    assert rows[lost]["reason"] == LOST_REPLY.format("timed out")
    assert server.accepted_count(dead) == 0
    assert len(server.messages) == 3
    assert took < 5  # three timeouts of 0.5 s, not three waits of 3 s
    assert run.finish() == "completed"


def test_per_connection_message_limit(tmp_path: Path) -> None:
    with FaultyServer(messages_per_connection=3) as server:
        run = plan(tmp_path, server, 10)
        control = RunControl.for_spec(run.spec)
        run.send(control)
    sent_once(run, server)
    assert set(attempts(run).values()) == {1}  # the limit costs no attempt...
    assert control.throttled == 0  # ...and is no slow-down
    assert server.connections == 4


def test_server_down_then_back(tmp_path: Path) -> None:
    """The server goes away for 3 s in the middle of the run (port closed) and comes back."""
    outage: list[threading.Thread] = []

    def go_down(event: Event) -> bool:
        if event.nth == 6 and not outage:
            outage.append(server.outage(3))
            return True  # and drop this connection at MAIL: no reply to a final dot is cut off
        return False

    server = FaultyServer(Rule("MAIL", drop=True, when=go_down))
    with server:
        run = plan(tmp_path, server, 12, retry_base_seconds=0.2)
        started = time.monotonic()
        run.send()
        took = time.monotonic() - started
        outage[0].join()
    sent_once(run, server)
    assert took >= 3
    assert max(attempts(run).values()) <= 2  # at most the message in flight was retried


def test_server_down_longer_than_the_retry_time_pauses_the_run(tmp_path: Path) -> None:
    def go_down(event: Event) -> bool:
        if event.nth == 4:
            server.stop_soon()
        return False

    server = StoppableServer(Rule("MAIL", when=go_down))
    with server:
        run = plan(tmp_path, server, 10, retry_base_seconds=0.1, max_retry_seconds=1)
        with pytest.raises(RunStopped) as info:
            run.send(chunks=2)
    err = info.value
    assert err.where == f"127.0.0.1:{server.port}"
    assert "could not be reached; the run's retry time (1s) is used up" in err.message
    assert f"mailcast resume {run.run_id}" in err.hint
    rows = run.rows()
    # a message whose reply the outage cut off (after its final dot) is `unknown`, not retried
    assert {"sent", "pending"} <= {r["status"] for r in rows.values()} <= {
        "sent", "pending", "unknown",
    }  # fmt: skip
    sent = sum(r["status"] == "sent" for r in rows.values())
    unknown = sum(r["status"] == "unknown" for r in rows.values())
    assert sent <= len(server.messages) <= sent + unknown < 10
    assert run.finish() == "paused"
    assert run.ledger.run(run.run_id).note == str(err)


class StoppableServer(FaultyServer):
    def stop_soon(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()


# -- TLS and authentication ---------------------------------------------------------------------


def test_starttls_advertised_but_failing_stops_before_any_recipient(tmp_path: Path) -> None:
    with FaultyServer(advertise_starttls=True) as server:
        url = f"smtp://127.0.0.1:{server.port}?security=starttls"
        run = plan(tmp_path, server, 5, url=url)
        with pytest.raises(TlsError) as info:
            run.send(chunks=2)
    assert str(info.value).startswith(f"127.0.0.1:{server.port}: STARTTLS refused: 454")
    assert "check `security`" in info.value.hint
    assert {(r["status"], r["attempts"]) for r in run.rows().values()} == {("pending", 0)}
    assert server.messages == []
    assert run.finish() == "paused"


def test_auth_failure_stops_before_any_recipient(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("MAILCAST_SMTP_PASSWORD", "not-the-password")
    with CaptureServer(username="mailer", password=PASSWORD) as server:
        run = plan(tmp_path, server, 5)
        with pytest.raises(AuthError) as info:
            run.send(chunks=2)
    assert str(info.value).startswith(
        f"127.0.0.1:{server.port}: authentication failed for user mailer: 535"
    )
    assert "MAILCAST_SMTP_PASSWORD" in info.value.hint
    assert {(r["status"], r["attempts"]) for r in run.rows().values()} == {("pending", 0)}
    assert server.messages == []


def test_auth_failing_mid_run_stops_the_run_without_failing_anyone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MAILCAST_SMTP_PASSWORD", PASSWORD)
    # from the second connection on (smtplib tries AUTH PLAIN, then LOGIN: both refused)
    rule = Rule("AUTH", reply="535 5.7.8 Credentials revoked", when=lambda e: e.connection >= 2)
    server = FaultyServer(rule, messages_per_connection=4, username="mailer", password=PASSWORD)
    with server:
        run = plan(tmp_path, server, 10)
        with pytest.raises(AuthError, match="Credentials revoked"):
            run.send()
    rows = run.rows()
    assert {r["status"] for r in rows.values()} == {"sent", "pending"}
    assert sum(r["status"] == "sent" for r in rows.values()) == 4 == len(server.messages)
    assert all(r["reason"] is None for r in rows.values())
    assert run.finish() == "paused"


# -- pausing itself, and every row accounted for -------------------------------------------------


def test_consecutive_failures_pause_the_run_then_resume_finishes_it(tmp_path: Path) -> None:
    from mailcast.engine.resume import reopen_run

    blocked = Rule("RCPT", reply="550 5.7.1 Service unavailable; client host blocked")
    with FaultyServer(blocked) as server:
        run = plan(tmp_path, server, 60, pause_after_failures=5)
        with pytest.raises(RunStopped) as info:
            run.send(chunks=3)
        err = info.value
        assert err.where == f"127.0.0.1:{server.port}"
        assert err.message.startswith("the run paused itself after 5 recipients in a row failed")
        assert "(the last: hard bounce: 550 5.7.1 Service unavailable" in err.message
        assert f"mailcast resume {run.run_id}" in err.hint
        counts = run.ledger.counts(run.run_id)
        # every thread stopped before its next message: ~5 failed (a thread may have been
        # mid-message when another reached the limit), the rest back to pending
        assert 5 <= counts["failed"] <= 7
        assert counts["pending"] == 60 - counts["failed"]
        assert counts["sending"] == 0
        assert server.messages == []
        assert run.finish() == "paused"
        assert run.ledger.run(run.run_id).note == str(err)
        summary = summarize_run(run.ledger, run.run_id)
        assert f"Stopped: {err}. `mailcast resume {run.run_id}` continues it." in summary.markdown()
        assert ("failed", "hard bounce: 550 5.7.1 Service unavailable; client host blocked (at RCPT)",
                counts["failed"]) in summary.reasons  # fmt: skip

        server.rules.clear()  # the block is lifted
        reopen_run(run.ledger, run.run_id)
        run.send(chunks=3)
    counts = run.ledger.counts(run.run_id)
    assert counts["sent"] == len(server.messages) == 60 - counts["failed"]
    assert run.finish() == "completed"


def test_authentication_required_at_mail_stops_the_run_without_failing_anyone(
    tmp_path: Path,
) -> None:
    """Issue 11: 530 5.7.0 at MAIL is the sender's problem: the run stops as an authentication
    failure (paused, with the reason), no recipient is failed, and resume sends them all."""
    from mailcast.engine.resume import reopen_run

    required = Rule("MAIL", reply="530 5.7.0 Authentication required")
    with FaultyServer(required) as server:
        run = plan(tmp_path, server, 60, pause_after_failures=50)
        with pytest.raises(AuthError) as info:
            run.send(chunks=3)
        err = info.value
        assert str(err) == (
            f"127.0.0.1:{server.port}: the server refused to send without valid authentication:"
            " 530 5.7.0 Authentication required (at MAIL)"
        )
        assert "username" in err.hint and "mailcast resume" in err.hint
        assert "\n" not in str(err)
        rows = run.rows()
        assert {(r["status"], r["reason"]) for r in rows.values()} == {("pending", None)}
        assert server.messages == []
        assert server.attempts("MAIL") <= 3  # each connection stopped at its first refusal
        assert run.finish() == "paused"
        assert run.ledger.run(run.run_id).note == str(err)
        summary = summarize_run(run.ledger, run.run_id)
        assert f"Stopped: {err}." in summary.markdown()

        server.rules.clear()  # the operator fixed the login
        reopen_run(run.ledger, run.run_id)
        run.send(chunks=3)
    sent_once(run, server)


def test_retry_failed_reopens_the_senders_refusals_not_the_recipients(tmp_path: Path) -> None:
    """Rows refused at MAIL (the sender's policy) are reopened by `retry --failed`, told apart
    by their recorded stage; a recipient refused at RCPT and mailcast's own refusal are not.
    SMTP-time bounces are the refusals of the recipient only; the unknown user is suppressed."""
    from mailcast.engagement.processing import record_smtp_bounces
    from mailcast.engine.resume import reopen_run

    addresses = ["a@example.com", "gone@example.com", "jörg@exämple.org", "b@example.com",
                 "c@example.com"]  # fmt: skip
    rules = [
        Rule("MAIL", reply="553 5.7.1 Sender address rejected: not owned by user", nth=1),
        Rule("RCPT", reply="550 5.1.1 No such user", address="gone@example.com"),
        Rule("MAIL", reply="550 5.7.1 Sender rejected by policy", nth=4),
    ]
    with FaultyServer(*rules, smtputf8=False) as server:
        run = plan(tmp_path, server, addresses=addresses, pause_after_failures=0)
        run.send()
        rows = run.rows()
        got = {a: (r["status"], r["smtp_code"], r["smtp_stage"]) for a, r in rows.items()}
        assert got == {
            "a@example.com": ("failed", 553, "MAIL"),
            "gone@example.com": ("failed", 550, "RCPT"),
            "jörg@exämple.org": ("failed", None, None),
            "b@example.com": ("sent", 250, "DATA"),
            "c@example.com": ("failed", 550, "MAIL"),
        }
        assert rows["jörg@exämple.org"]["reason"].startswith("not sent: the server does not")
        assert run.finish() == "completed"

        # only the refusal of the recipient is a bounce; it is suppressed by default
        assert record_smtp_bounces(run.db, run.run_id) == 1
        assert suppression.suppressed(run.ledger.engine) == {"gone@example.com": "hard_bounce"}

        assert reopen_run(run.ledger, run.run_id, retry_failed=True)["reopened"] == 2
        run.send()
    rows = run.rows()
    assert {a: r["status"] for a, r in rows.items()} == {
        "a@example.com": "sent", "gone@example.com": "failed", "jörg@exämple.org": "failed",
        "b@example.com": "sent", "c@example.com": "sent",
    }  # fmt: skip
    assert {a: server.accepted_count(a) for a in addresses} == {
        "a@example.com": 1, "gone@example.com": 0, "jörg@exämple.org": 0, "b@example.com": 1,
        "c@example.com": 1,
    }  # fmt: skip
    assert run.finish() == "completed"


@pytest.mark.parametrize("suppress", [True, False])
def test_a_hard_bounce_at_rcpt_is_suppressed_for_the_next_campaign(
    tmp_path: Path, suppress: bool
) -> None:
    """Issue 11: 550 5.1.1 at RCPT suppresses the address by default (as the same code in a DSN
    does): the next campaign skips it as `suppressed:hard_bounce`. A campaign can turn it off."""
    from mailcast.engagement.processing import record_smtp_bounces

    gone = "person1@example.com"
    db = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    extra = {} if suppress else {"suppress_smtp_bounces": False}
    with FaultyServer(Rule("RCPT", reply="550 5.1.1 No such user", address=gone)) as server:
        first = plan(tmp_path / "one", server, 3, db=db, name="first-campaign", **extra)
        first.send()
        assert first.rows()[gone]["reason"] == "hard bounce: 550 5.1.1 No such user (at RCPT)"
        assert record_smtp_bounces(db, first.run_id) == 1  # what the flow does after sending

        second = plan(
            tmp_path / "two", server, 3, db=db, name="second-campaign", expect_skipped=True,
            suppressed=suppression.suppressed_for(db),
        )  # fmt: skip
        second.send()
    rows = second.rows()
    if suppress:
        assert (rows[gone]["status"], rows[gone]["reason"]) == ("skipped", "suppressed:hard_bounce")
        assert server.attempts("RCPT", gone) == 1  # the second campaign never tried it
    else:
        assert rows[gone]["status"] == "failed"
        assert server.attempts("RCPT", gone) == 2


def test_unexpected_error_mid_send_leaves_the_row_unknown(tmp_path: Path) -> None:
    """Something unforeseen after the message left: the row is `unknown`, never re-sent."""
    from mailcast.engine.loop import run_connection
    from mailcast.ledger.store import Claim
    from mailcast.transport.smtp import SmtpConfig, SmtpTransport

    class Exploding(SmtpTransport):
        def send(self, sender: str, recipient: str, message: bytes) -> Any:
            reply = super().send(sender, recipient, message)
            if recipient == "person2@example.com":
                raise RuntimeError("disk full while logging")
            return reply

    with CaptureServer() as server:
        run = plan(tmp_path, server, 5)

        def compose(claim: Claim) -> tuple[str, bytes]:
            return f"<{claim.id}@x>", b"Subject: hi\r\n\r\nhello\r\n"

        lo, hi = chunk_ranges(run.ledger, run.run_id, 100)[0]
        with pytest.raises(RuntimeError):
            run_connection(
                run.ledger, Exploding(SmtpConfig.from_url(server.url)), compose,
                "s@example.com", run.run_id, lo, hi,
            )  # fmt: skip
    rows = run.rows()
    assert rows["person2@example.com"]["status"] == "unknown"
    assert rows["person2@example.com"]["reason"] == (
        "unexpected error while sending (RuntimeError: disk full while logging); may have been"
        " delivered"
    )
    assert [rows[a]["status"] for a in run.addresses] == [
        "sent", "sent", "unknown", "pending", "pending",
    ]  # fmt: skip
    assert server.accepted_count("person2@example.com") == 1
    assert run.finish() == "paused"


# -- through the CLI and the Prefect flow --------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def blocked_server() -> Iterator[FaultyServer]:
    with FaultyServer(Rule("RCPT", reply="550 5.7.1 Client host blocked")) as server:
        yield server


@pytest.mark.usefixtures("prefect_harness")
def test_cli_send_pauses_with_the_reason_and_resume_finishes(
    tmp_path: Path, blocked_server: FaultyServer
) -> None:
    from mailcast.cli import app

    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(
        tmp_path, people(30), attachments=False,
        spec_extra={**FAST, "pause_after_failures": 4, "chunk_size": 10, "connections": 2},
    )  # fmt: skip
    result = runner.invoke(
        app, ["send", str(spec), "--send", "--smtp", blocked_server.url, "--db", db]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    run_id = Ledger(db).runs()[0].id
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith(
        f"error: 127.0.0.1:{blocked_server.port}: the run paused itself after 4 recipients in a"
        " row failed (the last: hard bounce: 550 5.7.1 Client host blocked (at RCPT))"
    ), result.stderr
    assert (
        hint.startswith("hint: check the server's replies") and f"mailcast resume {run_id}" in hint
    )
    assert "paused" in result.stdout
    ledger = Ledger(db)
    assert ledger.run(run_id).status == "paused"
    failed = ledger.counts(run_id)["failed"]
    assert 4 <= failed <= 5

    blocked_server.rules.clear()
    again = runner.invoke(app, ["resume", run_id, "--smtp", blocked_server.url, "--db", db])
    assert again.exit_code == 0, again.output
    assert ledger.run(run_id).status == "completed"
    assert ledger.counts(run_id)["sent"] == 30 - failed == len(blocked_server.messages)


@pytest.mark.usefixtures("prefect_harness")
def test_cli_send_stops_on_authentication_required_and_resume_finishes(tmp_path: Path) -> None:
    """Issue 11: `530 5.7.0` at MAIL through the CLI and the flow: one line and a hint, the run
    paused with the reason, no recipient failed; resume (once the login is fixed) sends all."""
    from mailcast.cli import app

    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(
        tmp_path, people(30), attachments=False,
        spec_extra={**FAST, "chunk_size": 10, "connections": 2},
    )  # fmt: skip
    with FaultyServer(Rule("MAIL", reply="530 5.7.0 Authentication required")) as server:
        result = runner.invoke(app, ["send", str(spec), "--send", "--smtp", server.url, "--db", db])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output, result.output
        error, hint = result.stderr.strip().splitlines()[-2:]
        assert error == (
            f"error: 127.0.0.1:{server.port}: the server refused to send without valid"
            " authentication: 530 5.7.0 Authentication required (at MAIL)"
        ), result.stderr
        assert hint.startswith("hint: the server requires a login") and "resume" in hint
        ledger = Ledger(db)
        run_id = ledger.runs()[0].id
        assert ledger.run(run_id).status == "paused"
        assert "530 5.7.0 Authentication required" in (ledger.run(run_id).note or "")
        counts = ledger.counts(run_id)
        assert (counts["failed"], counts["pending"], counts["sent"]) == (0, 30, 0)

        server.rules.clear()  # the login is fixed
        again = runner.invoke(app, ["resume", run_id, "--smtp", server.url, "--db", db])
        assert again.exit_code == 0, again.output
    assert ledger.run(run_id).status == "completed"
    assert ledger.counts(run_id)["sent"] == 30 == len(server.messages)


@pytest.mark.usefixtures("prefect_harness")
def test_flow_stops_on_tls_failure_before_planning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.campaign import send_campaign

    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = load_spec(write_campaign(tmp_path, people(5), attachments=False))
    with FaultyServer(advertise_starttls=True) as server:
        url = f"smtp://127.0.0.1:{server.port}?security=starttls"
        with pytest.raises(TlsError, match=f"127.0.0.1:{server.port}: STARTTLS refused"):
            monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
            send_campaign(spec=spec, dry_run=False, smtp_url=url)
    assert server.messages == []
    assert Ledger(db).runs() == []  # nothing planned, no recipient marked
