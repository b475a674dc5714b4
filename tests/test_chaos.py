"""Chaos: SIGKILL the sending process again and again, at random moments (some of them inside a
ledger commit, held open by MAILCAST_FAULT_COMMIT_PAUSE), resume after each kill, and check the
ledger against what the SMTP server really received.

The seed is printed; rerun with MAILCAST_CHAOS_SEED=<seed> to replay the same kill schedule
(the timing of the machine still varies)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from mailcast.capture import CaptureServer
from mailcast.engine.journal import read_journals
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign

MAILCAST = str(Path(sys.executable).parent / "mailcast")
CONNECTIONS = 4  # per sending process: after a kill, at most this many rows are in doubt

# An outcome batch's transaction held open by the fault hook: `UPDATE deliveries SET status=…,
# reason=…, smtp_code=…` done, COMMIT not yet sent. (A claim's UPDATE sets no smtp_code.)
OPEN_COMMITS = text(
    """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND state = 'idle in transaction'
      AND query LIKE 'UPDATE deliveries SET status=%' AND query LIKE '%smtp_code%'
      AND clock_timestamp() - state_change < make_interval(secs => :young)
    """
)
# Backends still working for someone (a killed process's backend that has not yet noticed).
BUSY_BACKENDS = text(
    """
    SELECT count(*) FROM pg_stat_activity
    WHERE datname = current_database() AND pid <> pg_backend_pid()
      AND backend_type = 'client backend' AND state <> 'idle'
    """
)


def _seed() -> int:
    given = os.environ.get("MAILCAST_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


@dataclass
class Kill:
    """What the ledger and the server looked like right after one SIGKILL."""

    n: int
    command: str
    pause: float  # MAILCAST_FAULT_COMMIT_PAUSE of the killed process
    captured: int  # messages the server had accepted in all, at the kill
    by_this: int  # ... of which from the killed process
    open_commit: bool  # an outcome transaction was open (uncommitted) just before the kill
    sent: set[str]  # rows `sent` at the kill: none of them may ever get a second copy
    in_flight: set[str]  # rows left `sending` and on the wire: they become `unknown` on resume
    recovered: set[str]  # rows left `sending` that the journal says were accepted: `sent`
    reserved: set[str]  # rows left `sending` but only reserved: resume sends them
    unrecorded: int  # in-flight rows the server had already accepted (delivered, not recorded)

    def line(self) -> str:
        return (
            f"kill {self.n} ({self.command}, commit pause {self.pause:.3f}s): "
            f"{self.by_this} new / {self.captured} captured in all; sent {len(self.sent)}, "
            f"in flight {len(self.in_flight)}, accepted but not recorded {len(self.recovered)}"
            f" ({self.unrecorded} delivered, not recorded), "
            f"reserved {len(self.reserved)}, "
            f"outcome commit open: {'yes' if self.open_commit else 'no'}"
        )


class Chaos:
    """Starts `mailcast` subprocesses against one capture server and one ledger, kills them."""

    def __init__(
        self, tmp_path: Path, server: CaptureServer, pg_url: str, campaign: str, seed: int
    ) -> None:
        from prefect.settings import PREFECT_API_URL

        self.tmp_path = tmp_path
        self.server = server
        self.campaign = campaign
        self.rng = random.Random(seed)
        self.ledger = Ledger(pg_url)  # the schema exists before any subprocess starts
        self.env = {
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "MAILCAST_DATABASE_URL": pg_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        self.env.pop("MAILCAST_FAULT_COMMIT_PAUSE", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.kills: list[Kill] = []
        self._run_id: str | None = None

    # -- processes ------------------------------------------------------------------------

    def start(self, *args: str, pause: float = 0.0) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if pause:
            env["MAILCAST_FAULT_COMMIT_PAUSE"] = f"{pause:.3f}"
        log = self.tmp_path / f"{len(self.procs):02d}-{args[0]}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [MAILCAST, *args, "--smtp", self.server.url],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg takes every thread/child
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def captured(self) -> int:
        return len(self.server.messages)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    def kill_at_random(
        self, proc: subprocess.Popen[bytes], command: str, pause: float, lo: int, hi: int
    ) -> Kill:
        """Wait for a random number of new messages from ``proc`` (then a random moment, or,
        when its commits are held open, the next open outcome commit) and SIGKILL its group."""
        base = self.captured()
        target = self.rng.randint(lo, hi)
        jitter = self.rng.uniform(0.0, 0.25)
        self.wait(
            lambda: self.captured() >= base + target or proc.poll() is not None,
            180,
            f"{target} messages from {command}",
        )
        assert proc.poll() is None, f"{command} exited ({proc.returncode}) before the kill"
        open_commit = False
        if pause:
            # Aim inside a commit: kill as soon as an outcome transaction is seen open (and young
            # enough that it stays open for the ~1 ms the kill takes).
            deadline = time.monotonic() + 3.0
            with self.ledger.engine.connect() as conn:
                while time.monotonic() < deadline and proc.poll() is None:
                    if conn.execute(OPEN_COMMITS, {"young": pause / 2}).scalar_one():
                        open_commit = True
                        break
                    conn.rollback()
            if open_commit:
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            time.sleep(jitter)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"{command} exited {proc.returncode}"
        self.settle()
        rows = self.statuses()
        captured = {m.rcpt_tos[0] for m in self.server.messages}
        sent = {a for a, s in rows.items() if s == "sent"}
        on_wire, accepted = self.handed()
        in_flight = {a for a, s in rows.items() if s == "sending" and a in on_wire - accepted}
        recovered = {a for a, s in rows.items() if s == "sending" and a in accepted}
        reserved = {
            a for a, s in rows.items() if s == "sending" and a not in on_wire and a not in accepted
        }
        # Nothing of a reserved row's message has left: the server never saw it.
        assert not reserved & captured, f"reserved but captured: {sorted(reserved & captured)}"
        # The send engine's promise, at every kill: a row is committed `sending` before its DATA
        # leaves, and `sent` only after the server accepted it.
        recorded = {a for a, s in rows.items() if s in ("sent", "sending", "unknown")}
        assert captured <= recorded, f"captured but pending: {sorted(captured - recorded)[:10]}"
        assert sent <= captured, f"sent but never captured: {sorted(sent - captured)[:10]}"
        kill = Kill(
            n=len(self.kills) + 1,
            command=command,
            pause=pause,
            captured=len(self.server.messages),
            by_this=len(self.server.messages) - base,
            open_commit=open_commit,
            sent=sent,
            in_flight=in_flight,
            recovered=recovered,
            reserved=reserved,
            unrecorded=len((in_flight | recovered) & captured),
        )
        self.kills.append(kill)
        print(kill.line())
        return kill

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
        code = proc.wait(timeout=timeout)
        assert code == 0, f"{proc.args[1]} exited {code}"

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def tails(self, chars: int = 2500) -> str:
        parts = []
        for log in self.logs:
            body = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"----- {log.name} (last {chars} chars) -----\n{body[-chars:]}")
        return "\n".join(parts)

    # -- the ledger ------------------------------------------------------------------------

    def settle(self, timeout: float = 20) -> None:
        """Wait until the killed process's Postgres backends are gone (their open transactions
        rolled back, a COMMIT already on the wire applied): the ledger is then what it stays."""
        with self.ledger.engine.connect() as conn:

            def quiet() -> bool:
                busy = conn.execute(BUSY_BACKENDS).scalar_one()
                conn.rollback()
                return busy == 0

            self.wait(quiet, timeout, "the killed process's database sessions to end")

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            self._run_id = next(r.id for r in self.ledger.runs() if r.campaign == self.campaign)
        return self._run_id

    def statuses(self) -> dict[str, str]:
        return {r["address"]: r["status"] for r in self.ledger.deliveries(self.run_id)}

    def handed(self) -> tuple[set[str], set[str]]:
        """Addresses of the rows whose message was handed over (``handed_at`` set, or on the
        wire in a sender's journal: crash_window message), and of the rows the journals say
        were accepted."""
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, address, handed_at FROM deliveries WHERE run_id = :r"),
                {"r": self.run_id},
            ).all()
        address = {r[0]: r[1] for r in rows}
        on_wire = {r[1] for r in rows if r[2] is not None}
        accepted: set[str] = set()
        folder = Path(os.environ["MAILCAST_DATA_DIR"]) / "journal"
        for found in read_journals(folder, self.run_id).values():
            assert found.trusted
            on_wire |= {address[i] for i in found.in_doubt}
            accepted |= {address[i] for i in found.accepted}
        return on_wire, accepted

    def copies(self) -> Counter[str]:
        return Counter(m.rcpt_tos[0] for m in self.server.messages)


@contextmanager
def chaos(tmp_path: Path, pg_url: str, campaign: str, seed: int) -> Iterator[Chaos]:
    """A Chaos over a fresh capture server; on failure the seed and every log's tail are
    printed; every subprocess is killed at the end."""
    with CaptureServer() as server:
        c = Chaos(tmp_path, server, pg_url, campaign, seed)
        try:
            yield c
        except BaseException:
            print(f"\nchaos FAILED (seed {seed}); subprocess logs:\n{c.tails()}")
            raise
        finally:
            c.cleanup()


def _send_and_kill(c: Chaos, spec: Path, kills: int, pauses: list[float], lo: int, hi: int) -> None:
    """`send`, killed; then `resume`, killed, until ``kills`` kills are done."""
    for i in range(kills):
        args = ("send", str(spec), "--send") if i == 0 else ("resume", c.run_id)
        proc = c.start(*args, pause=pauses[i])
        c.kill_at_random(proc, args[0], pauses[i], lo, hi)


@pytest.mark.slow
def test_chaos_kills_then_resume_default_policy(
    tmp_path: Path, prefect_harness: None, pg_url: str
) -> None:
    started = time.monotonic()
    seed = _seed()
    n, kills = 20_000, 5
    rows = people(n)
    everyone = {r["email"] for r in rows}
    campaign = f"chaos-{seed}"
    spec = write_campaign(
        tmp_path, rows, name=campaign, attachments=False,
        spec_extra={"connections": CONNECTIONS, "chunk_size": 1000},  # crash_window: message
    )  # fmt: skip
    print(f"\nchaos seed {seed} (MAILCAST_CHAOS_SEED={seed} replays it): {n} recipients")
    with chaos(tmp_path, pg_url, campaign, seed) as c:
        # Some of the killed processes hold each outcome commit open, and are killed inside one.
        held = set(c.rng.sample(range(kills), 3))
        pauses = [round(c.rng.uniform(0.02, 0.05), 3) if i in held else 0.0 for i in range(kills)]
        _send_and_kill(c, spec, kills, pauses, lo=300, hi=2500)
        final = c.start("resume", c.run_id)
        c.finish(final)

        ledger = c.ledger
        counts = ledger.counts(c.run_id)
        statuses = c.statuses()
        copies = c.copies()
        unknown = {a for a, s in statuses.items() if s == "unknown"}
        sent = {a for a, s in statuses.items() if s == "sent"}
        dupes = {a: k for a, k in copies.items() if k > 1}
        in_commit = [k for k in c.kills if k.open_commit]
        with_in_flight = [k for k in c.kills if k.in_flight]
        print(
            f"recipients {n}; captured messages {sum(copies.values())}; "
            f"distinct captured addresses {len(copies)}\n"
            f"ledger: {', '.join(f'{s} {v}' for s, v in counts.items())}\n"
            f"unknown rows {len(unknown)} (received: "
            f"{sum(1 for a in unknown if copies[a])} once, "
            f"{sum(1 for a in unknown if not copies[a])} never); "
            f"duplicates {len(dupes)} (max copies {max(copies.values())})\n"
            f"kills {len(c.kills)}: {len(with_in_flight)} with rows in flight, "
            f"{len(in_commit)} inside an open outcome commit, "
            f"{sum(k.unrecorded for k in c.kills)} rows delivered but not recorded at a kill"
        )

        assert ledger.run(c.run_id).status == "completed"
        assert len(c.kills) == kills
        # the kills landed where it hurts: rows in flight, and inside ledger commits
        assert with_in_flight, "no kill found rows in flight"
        assert in_commit, "no kill saw an open outcome commit (see OPEN_COMMITS vs Ledger.record)"
        assert any(k.unrecorded for k in in_commit), "a kill inside a commit lost no outcome"
        # 1. every valid recipient got a copy, except unknown rows, which got 0 or 1
        assert everyone - unknown <= set(copies), sorted(everyone - unknown - set(copies))[:10]
        assert all(copies[a] <= 1 for a in unknown)
        # unknown rows are exactly those left `sending` and handed over by the kills: at most the
        # message each connection had on the wire (4 connections); rows only reserved were sent
        assert unknown == set().union(*(k.in_flight for k in c.kills))
        assert all(len(k.in_flight) <= CONNECTIONS for k in c.kills), [k.line() for k in c.kills]
        # rows accepted but not yet recorded at a kill were recorded from the journal: sent
        assert set().union(*(k.recovered for k in c.kills)) <= sent
        assert any(k.reserved for k in c.kills), "no kill left a reserved row to be sent on resume"
        # a row only reserved at a kill is sent by the next resume: it ends `unknown` only if that
        # resume (or a later one) was itself killed with the row on the wire
        for i, k in enumerate(c.kills):
            later = set().union(*(j.in_flight for j in c.kills[i + 1 :]))
            assert not (k.reserved & unknown - later), (k.line(), sorted(k.reserved & unknown)[:5])
        # 2. no row `sent` at any kill got a second copy
        for k in c.kills:
            again = sorted(a for a in k.sent if copies[a] != 1)
            assert not again, f"kill {k.n}: sent before it, received again: {again[:10]}"
        # 3. the default policy re-sends nothing: no duplicates at all
        assert not dupes, sorted(dupes.items())[:10]
        assert max(copies.values()) == 1
        # 4. the ledger agrees with the server
        assert set(copies) <= everyone
        assert sent == set(copies) - unknown
        assert counts["sent"] == len(set(copies) - unknown)
        assert counts["pending"] == counts["sending"] == 0
        assert counts["sent"] + counts["unknown"] + counts["failed"] + counts["skipped"] == n
    print(f"chaos (default policy) took {time.monotonic() - started:.0f}s")


@pytest.mark.slow
def test_chaos_resend_unknown(tmp_path: Path, prefect_harness: None, pg_url: str) -> None:
    started = time.monotonic()
    seed = _seed()
    n = 3_000
    rows = people(n)
    everyone = {r["email"] for r in rows}
    campaign = f"chaos-resend-{seed}"
    spec = write_campaign(
        tmp_path, rows, name=campaign, attachments=False,
        spec_extra={"connections": 4, "chunk_size": 300},
    )  # fmt: skip
    print(f"\nchaos --resend-unknown seed {seed}: {n} recipients")
    with chaos(tmp_path, pg_url, campaign, seed) as c:
        pauses = [round(c.rng.uniform(0.03, 0.05), 3) for _ in range(2)]
        _send_and_kill(c, spec, 2, pauses, lo=300, hi=900)
        # what the re-send may duplicate: rows unknown now, or left `sending` by the last kill
        # (except those its journals say were accepted: they are recorded sent, not re-sent)
        before = c.copies()
        _, accepted = c.handed()
        maybe = {a for a, s in c.statuses().items() if s in ("unknown", "sending")} - accepted
        final = c.start("resume", c.run_id, "--resend-unknown")
        c.finish(final)

        counts = c.ledger.counts(c.run_id)
        copies = c.copies()
        dupes = {a: k for a, k in copies.items() if k > 1}
        print(
            f"recipients {n}; captured messages {sum(copies.values())}; distinct captured "
            f"addresses {len(copies)}; unknown before --resend-unknown {len(maybe)} "
            f"({sum(1 for a in maybe if before[a])} of them already received); "
            f"duplicates {len(dupes)} (max copies {max(copies.values())})\n"
            f"ledger: {', '.join(f'{s} {v}' for s, v in counts.items())}"
        )
        assert maybe, "the kills left no row unknown"
        # every recipient got at least one copy, and the ledger says sent for all of them
        assert set(copies) == everyone
        assert counts["sent"] == n
        # each unknown row was sent exactly once more; nobody else ever got a second copy
        assert set(dupes) <= maybe, sorted(set(dupes) - maybe)[:10]
        assert all(copies[a] == before[a] + 1 for a in maybe)
        assert all(copies[a] == 1 for a in everyone - maybe)
        # a kill inside a commit left delivered rows `sending`: those the journals say were
        # accepted were recorded sent and never re-sent; only rows on the wire at a kill that
        # the server had kept get a second copy from --resend-unknown
        recovered = set().union(*(k.recovered for k in c.kills))
        assert recovered, "no kill left an accepted row unrecorded"
        assert not recovered & set(dupes)
        assert set(dupes) == {a for a in maybe if before[a]}
    print(f"chaos (--resend-unknown) took {time.monotonic() - started:.0f}s")
