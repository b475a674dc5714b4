"""The throughput engine: chunks sent over several connections (threads sharing the chunk's
rows), worker processes, chunk sizing, the server's concurrency limit, and a slow server
handled by concurrency."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP
from mailcast.engine.chunk import send_chunk
from mailcast.engine.chunking import TAIL_ROWS_PER_CONNECTION, Chunker
from mailcast.engine.control import RunControl
from mailcast.engine.loop import ChunkWork
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import plan_rows
from mailcast.spec import load_spec
from mailcast.transport.factory import Target
from tests.campaigns import people, write_campaign
from tests.ledger_rows import chunk_ranges

pytestmark = pytest.mark.serial  # timing figures: alone

FAST = {"retry_base_seconds": 0.05, "max_retry_seconds": 30}


def _planned(folder: Path, db: str, n: int, **spec_extra: Any) -> tuple[Any, str, Ledger]:
    from mailcast.recipients.dedupe import dedupe_recipients
    from mailcast.recipients.sources import read_recipients
    from mailcast.recipients.validate import validate_recipients

    spec = load_spec(
        write_campaign(folder, people(n), attachments=False, spec_extra={**FAST, **spec_extra})
    )
    table = dedupe_recipients(validate_recipients(read_recipients(spec.recipients, spec.base_dir)))
    ledger = Ledger(db)
    target = Target(smtp_url="smtp://127.0.0.1:1?security=none")
    run_id = plan_rows(ledger, spec, table.rows, table.columns, target)
    return spec, run_id, ledger


# -- one chunk, several connections ----------------------------------------------------------


def test_a_chunk_over_four_connections_sends_each_row_once(tmp_path: Path, db_url: str) -> None:
    spec, run_id, ledger = _planned(tmp_path, db_url, 300)
    with CaptureServer() as server:
        (bounds,) = chunk_ranges(ledger, run_id, 1000)
        target = Target(smtp_url=server.url)
        result = send_chunk(spec, run_id, bounds, db_url, target, threads=4)
        copies = Counter(m.rcpt_tos[0] for m in server.messages)
    assert result.sent == 300
    assert len(copies) == 300 and set(copies.values()) == {1}
    assert server.connections == 4
    assert ledger.counts(run_id)["sent"] == 300


def test_a_small_chunk_opens_no_more_connections_than_rows(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec, run_id, ledger = _planned(tmp_path, db, 3)
    with CaptureServer() as server:
        (bounds,) = chunk_ranges(ledger, run_id, 1000)
        send_chunk(spec, run_id, bounds, db, Target(smtp_url=server.url), threads=8)
    assert len(server.messages) == 3
    assert server.connections <= 3


class FlakyHandler(CaptureHandler):
    """Answers 451 to the first try of every third recipient."""

    def __init__(self, server: CaptureServer) -> None:
        super().__init__(server)
        self.tries: Counter[str] = Counter()

    async def handle_RCPT(
        self, smtp: CaptureSMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        self.tries[address] += 1
        number = int(address.removeprefix("person").partition("@")[0])
        if number % 3 == 0 and self.tries[address] == 1:
            return "451 4.3.0 try again later"
        return await super().handle_RCPT(smtp, session, envelope, address, options)


class FlakyServer(CaptureServer):
    handler_class = FlakyHandler


def test_retries_wait_for_their_backoff_whichever_thread_takes_them(tmp_path: Path) -> None:
    """A row deferred by one connection is not taken early by another (the chunk's threads
    share the deferred rows), and every row ends sent once."""
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec, run_id, ledger = _planned(
        tmp_path, db, 60, retry_base_seconds=0.4, pause_after_failures=0
    )
    with FlakyServer() as server:
        (bounds,) = chunk_ranges(ledger, run_id, 1000)
        started = time.monotonic()
        result = send_chunk(
            spec, run_id, bounds, db, Target(smtp_url=server.url), threads=4,
            control=RunControl(retry_base=0.4, pause_after_failures=0),
        )  # fmt: skip
        took = time.monotonic() - started
        copies = Counter(m.rcpt_tos[0] for m in server.messages)
    assert result.sent == 60 and result.retried == 20
    assert set(copies.values()) == {1} and len(copies) == 60
    assert took >= 0.2  # the backoff (0.2-0.4 s) was waited for
    assert max(server.handler.tries.values()) == 2  # type: ignore[attr-defined]


def test_chunk_work_hands_each_id_out_once_across_threads() -> None:
    work = ChunkWork(range(10_000))
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        while ids := work.take(7):
            with lock:
                taken.extend(ids)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(10_000))
    work.defer(5, time.monotonic() + 60)
    work.defer(6, time.monotonic() - 1)
    assert work.due(time.monotonic()) == [6]
    assert work.due(time.monotonic(), everything=True) == [5]
    assert work.next_due() is None


# -- SMTP pipelining ------------------------------------------------------------------------------


class PipeliningHandler(CaptureHandler):
    """Offers PIPELINING (aiosmtpd reads pipelined commands in order); refuses MAIL from
    blocked@..., RCPT to bad@... and answers 421 to RCPT for gone@... ."""

    async def handle_EHLO(
        self, smtp: CaptureSMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(
        self, smtp: CaptureSMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> str:  # fmt: skip
        if address.startswith("blocked@"):
            return "553 5.7.1 sender blocked"
        return await super().handle_MAIL(smtp, session, envelope, address, mail_options)

    async def handle_RCPT(
        self, smtp: CaptureSMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address.startswith("bad@"):
            return "550 5.1.1 no such user"
        if address.startswith("gone@"):
            return "421 4.3.2 closing"
        return await super().handle_RCPT(smtp, session, envelope, address, options)


class PipeliningServer(CaptureServer):
    handler_class = PipeliningHandler


def test_pipelined_commands_report_the_stage_refused_and_keep_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailcast.errors import SmtpReplyError
    from mailcast.transport import smtp as smtp_module
    from mailcast.transport.smtp import SmtpConfig, SmtpTransport

    used: list[bool] = []
    can = smtp_module._can_pipeline
    monkeypatch.setattr(smtp_module, "_can_pipeline", lambda *a: used.append(can(*a)) or used[-1])
    message = b"Subject: hi\r\n\r\nhello\r\n.leading dot\r\n"
    with PipeliningServer() as server:
        transport = SmtpTransport(SmtpConfig.from_url(server.url))
        assert transport.send("s@example.com", "a@example.com", message).code == 250
        with pytest.raises(SmtpReplyError) as rcpt:
            transport.send("s@example.com", "bad@example.com", message)
        assert (rcpt.value.stage, rcpt.value.code) == ("RCPT", 550)
        with pytest.raises(SmtpReplyError) as mail:
            transport.send("blocked@example.com", "b@example.com", message)
        assert (mail.value.stage, mail.value.code) == ("MAIL", 553)
        assert transport.send("s@example.com", "c@example.com", message).code == 250
        assert server.connections == 1  # refusals left the connection usable
        with pytest.raises(SmtpReplyError) as gone:
            transport.send("s@example.com", "gone@example.com", message)
        assert (gone.value.stage, gone.value.code) == ("RCPT", 421)
        assert transport.send("s@example.com", "d@example.com", message).code == 250
        assert server.connections == 2  # reconnected after the 421
        transport.close()
        got = {m.rcpt_tos[0]: m.data for m in server.messages}
    assert set(got) == {"a@example.com", "c@example.com", "d@example.com"}
    assert all(d.replace(b"\r\n", b"\n") == message.replace(b"\r\n", b"\n") for d in got.values())
    assert used and all(used)  # every message went pipelined


# -- chunk sizes ---------------------------------------------------------------------------------


def _chunks(n: int, **options: Any) -> list[int]:
    chunker = Chunker(list(range(n)), **options)
    sizes = []
    threads = options.get("threads_per_task", 1)
    while (bounds := chunker.take(threads)) is not None:
        sizes.append(bounds[1] - bounds[0] + 1)
    return sizes


def test_one_connection_per_chunk_keeps_the_specs_chunk_size() -> None:
    chunker = Chunker(list(range(1000)), per_connection=300, connections=4, guided=False)
    sizes = []
    while (bounds := chunker.take(1)) is not None:
        sizes.append(bounds[1] - bounds[0] + 1)
    assert sizes == [300, 300, 300, 100]


def test_guided_chunks_shrink_towards_the_end_and_cover_every_row() -> None:
    chunker = Chunker(list(range(100_000)), per_connection=2000, connections=8, guided=True)
    sizes = []
    while (bounds := chunker.take(4)) is not None:
        sizes.append(bounds[1] - bounds[0] + 1)
    assert sum(sizes) == 100_000
    assert sizes[0] == 8000  # full chunks while plenty remain
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-2] <= 4 * TAIL_ROWS_PER_CONNECTION  # small at the end
    assert len(sizes) < 60


def test_a_small_run_still_keeps_every_connection_busy() -> None:
    """1,000 rows over 50 connections in chunks of 4 connections (12 tasks of 4, one of 2):
    the first round takes every row, about 20 per connection."""
    chunker = Chunker(list(range(1000)), per_connection=2000, connections=50, guided=True)
    sizes = [chunker.take(4) for _ in range(12)] + [chunker.take(2)]
    rows = [b[1] - b[0] + 1 for b in sizes if b is not None]
    assert sum(rows) == 1000
    assert max(rows) / 4 <= 21 and min(rows) / 2 >= 19


# -- bounded_map: task slots, connections, the concurrency limit -----------------------------------


class _Done:
    """A finished future for bounded_map."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self._final_state = True

    def result(self) -> Any:
        return self.value


def test_bounded_map_gives_each_slot_its_connections_within_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mailcast.tasks.dispatch as campaign

    monkeypatch.setattr(campaign, "as_completed", lambda futures, timeout=None: iter(futures))
    given: list[int] = []
    results, errors = campaign.bounded_map(
        lambda item, n: given.append(n) or _Done(item), list(range(10)), limit=4, threads=3,
        connections=10,
    )  # fmt: skip
    assert sorted(results) == list(range(10)) and not errors
    assert given[:4] == [3, 3, 3, 1]  # 10 connections: three slots of 3 and one of 1


def test_bounded_map_never_waits_for_the_limit_while_holding_part_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two runs sharing a limit must not deadlock: beyond the first slot, a slot that cannot get
    its share right now is skipped (and asked for again later)."""
    import mailcast.tasks.dispatch as campaign

    monkeypatch.setattr(campaign, "as_completed", lambda futures, timeout=None: iter(futures))
    asked: list[tuple[int, bool]] = []
    held = 0

    class Held:
        def __enter__(self) -> None:
            nonlocal held
            held += 1

        def __exit__(self, *exc: object) -> None:
            nonlocal held
            held -= 1

    def hold(n: int, wait: bool) -> Held | None:
        asked.append((n, wait))
        return Held() if wait else None  # only a waiting acquisition succeeds here

    results, _ = campaign.bounded_map(
        lambda item, n: _Done(item), list(range(5)), limit=3, threads=2, hold=hold
    )
    assert sorted(results) == list(range(5))
    assert asked[0] == (6, False)  # all three slots at once, only if free now
    assert asked[1] == (2, True)  # then the first slot may wait: nothing is held yet
    assert all(not wait for _, wait in asked[2:])  # the others only try
    assert held == 0  # everything released at the end


def test_bounded_map_takes_a_free_limit_in_one_acquisition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mailcast.tasks.dispatch as campaign

    monkeypatch.setattr(campaign, "as_completed", lambda futures, timeout=None: iter(futures))
    asked: list[tuple[int, bool]] = []
    events: list[str] = []

    class Held:
        def __enter__(self) -> None:
            events.append("acquired")

        def __exit__(self, *exc: object) -> None:
            events.append("released")

    def hold(n: int, wait: bool) -> Held:
        asked.append((n, wait))
        return Held()

    def submit(item: int, n: int) -> _Done:
        events.append(f"chunk {item}")
        return _Done(item)

    results, _ = campaign.bounded_map(submit, list(range(7)), limit=3, threads=2, hold=hold)
    assert sorted(results) == list(range(7))
    assert asked == [(6, False)]  # one API call for the three slots' six connections
    assert events[0] == "acquired" and events[-1] == "released"
    assert events.count("released") == 1 and len(events) == 9  # held across all 7 chunks


def test_orphaned_leases_of_dead_processes_are_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    import prefect.concurrency._sync as sync
    from mailcast.tasks import limits

    monkeypatch.setattr(limits.tempfile, "gettempdir", lambda: str(tmp_path))
    released: list[uuid.UUID] = []
    monkeypatch.setattr(sync, "release_concurrency_slots_with_lease", released.append)
    folder = limits._leases_dir("smtp:example:25")
    folder.mkdir(parents=True)
    dead, alive = uuid.uuid4(), uuid.uuid4()
    (folder / f"999999999-{dead}").touch()  # no such process
    (folder / f"{__import__('os').getpid()}-{alive}").touch()  # this one is alive
    assert limits.release_orphans("smtp:example:25") == 1
    assert released == [dead]
    assert [p.name for p in folder.iterdir()] == [f"{__import__('os').getpid()}-{alive}"]


# -- the flow: worker processes, the concurrency limit ----------------------------------------------


@pytest.mark.slow
def test_two_worker_processes_send_each_row_once_within_the_limit(
    tmp_path: Path, prefect_harness: None, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.campaign import send_campaign
    from prefect.client.orchestration import get_client

    spec = write_campaign(
        tmp_path, people(800), attachments=False,
        spec_extra={"workers": 2, "connections": 6, "chunk_size": 100},
    )  # fmt: skip
    monkeypatch.setenv("MAILCAST_DATABASE_URL", pg_url)
    with CaptureServer() as server:
        summary = send_campaign(spec=load_spec(spec), dry_run=False, smtp_url=server.url)
        copies = Counter(m.rcpt_tos[0] for m in server.messages)
    assert summary.counts["sent"] == 800
    assert len(copies) == 800 and set(copies.values()) == {1}
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(f"smtp:127.0.0.1:{server.port}")
        progress = [
            a
            for a in client.read_artifacts(limit=200)
            if a.type == "progress" and str(a.flow_run_id) == summary.run_id
        ]
    assert limit.limit == 6  # created with the run's connections
    assert limit.active_slots == 0  # and released at the end
    # the run's progress artifact: done, with the limits it ran under
    assert [a.key for a in progress] == ["test-campaign-progress"]
    assert progress[0].data == 100.0
    assert "sent 800, failed 0" in (progress[0].description or "")
    assert f"concurrency limit `smtp:127.0.0.1:{server.port}` (6 slots)" in (
        progress[0].description or ""
    )
    assert "2 worker processes × 3 connections" in (progress[0].description or "")


class PacedHandler(CaptureHandler):
    """Takes 40 ms per message, so two runs of a few hundred messages overlap in time."""

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        import asyncio

        await asyncio.sleep(0.04)
        return await super().handle_DATA(smtp, session, envelope)


class PacedServer(CaptureServer):
    handler_class = PacedHandler


@pytest.mark.slow
@pytest.mark.parametrize("size", [3, 6])
def test_concurrent_runs_share_the_servers_connection_limit(
    tmp_path: Path, prefect_harness: None, pg_url: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at once, 3 connections each, against one server: with a limit of 3 slots the
    server never sees more than 3 connections open at once; with 6, both runs send together
    (which shows the runs do overlap, so the first case is the limit's doing)."""
    from mailcast.flows.campaign import send_campaign
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    specs = [
        load_spec(
            write_campaign(
                tmp_path / name, people(450), attachments=False,
                spec_extra={"connections": 3, "chunk_size": 100},
            )
        )
        for name in ("a", "b")
    ]  # fmt: skip
    summaries: list[Any] = []
    monkeypatch.setenv("MAILCAST_DATABASE_URL", pg_url)  # the worker's ledger
    with PacedServer() as server:
        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=f"smtp:127.0.0.1:{server.port}", limit=size)
            )

        def run(spec: Any) -> None:
            summaries.append(send_campaign(spec=spec, dry_run=False, smtp_url=server.url))

        runs = [threading.Thread(target=run, args=(spec,)) for spec in specs]
        for t in runs:
            t.start()
        for t in runs:
            t.join(120)
        peak = server.peak_open
    print(f"two runs, limit {size}: at most {peak} connections open at once")
    assert sorted(s.counts["sent"] for s in summaries) == [450, 450]
    if size == 3:
        assert peak <= 3
    else:
        assert peak > 3


# -- a slow server: concurrency, not speed ----------------------------------------------------------


# The slow server runs in its own process, as a real one would: in the test's process it would
# share the GIL with 50-200 sending threads and slow them down.
SLOW_SERVER = """
import asyncio, json, sys, time
from mailcast.capture import CaptureHandler, CaptureServer

delay = float(sys.argv[1])
times = []

class Slow(CaptureHandler):
    async def handle_MAIL(self, smtp, session, envelope, address, options):
        times.append(("mail", time.monotonic()))
        return await super().handle_MAIL(smtp, session, envelope, address, options)

    async def handle_DATA(self, smtp, session, envelope):
        await asyncio.sleep(delay)
        times.append(("data", time.monotonic()))
        return "250 2.0.0 Ok"  # nothing kept: 10,000 messages

class Server(CaptureServer):
    handler_class = Slow

with Server() as server:
    print(server.port, flush=True)
    sys.stdin.read()  # until the test is done
    mails = [t for k, t in times if k == "mail"]
    datas = [t for k, t in times if k == "data"]
    print(json.dumps({"first": min(mails), "last": max(datas), "messages": len(datas),
                      "connections": server.connections}), flush=True)
"""


class SlowServer:
    """An SMTP server in a subprocess where every message takes ``delay`` seconds (the reply
    to DATA waits). ``result()`` after the run: first MAIL and last reply (monotonic clock,
    system-wide), messages, connections."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __enter__(self) -> SlowServer:
        import subprocess
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_SERVER, str(self.delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"smtp://127.0.0.1:{self.port}?security=none"
        return self

    def result(self) -> dict[str, Any]:
        import json

        out, _ = self.proc.communicate("", timeout=60)
        return dict(json.loads(out.strip().splitlines()[-1]))

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def slow_run(
    folder: Path, db: str, n: int, connections: int, delay: float, **spec_extra: Any
) -> tuple[float, dict[str, Any], Any]:
    """Send ``n`` recipients to a slow server; (seconds from the first MAIL to the last
    accepted message, the server's figures, the run's summary)."""
    from mailcast.flows.campaign import send_campaign

    spec = write_campaign(
        folder, people(n), attachments=False,
        spec_extra={"connections": connections, **spec_extra},
    )  # fmt: skip
    with SlowServer(delay) as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAILCAST_DATABASE_URL", db)  # the worker's ledger
        summary = send_campaign(spec=load_spec(spec), dry_run=False, smtp_url=server.url)
        figures = server.result()
    return figures["last"] - figures["first"], figures, summary


@pytest.mark.slow
def test_slow_server_is_handled_by_concurrency(
    tmp_path: Path, prefect_harness: None, pg_url: str
) -> None:
    """1,000 recipients, 0.2 s per message, 50 connections: within 1.3 × the ideal
    (1,000 × 0.2 / 50 = 4 s), from the first MAIL to the last accepted message."""
    n, connections, delay = 1000, 50, 0.2
    took, figures, summary = slow_run(tmp_path, pg_url, n, connections, delay)
    ideal = n * delay / connections
    print(
        f"slow server: {n} messages, {delay}s each, {connections} connections: {took:.2f}s,"
        f" {took / ideal:.2f} × the ideal {ideal:.1f}s; {figures['connections']} connections"
    )
    assert summary.counts["sent"] == n and figures["messages"] == n
    assert took <= 1.3 * ideal


def test_progress_describes_the_limits_without_prefect() -> None:
    from mailcast.tasks.progress import Limits, RunProgress

    limits = Limits(connections=4, workers=1, threads=4, rate_limit=20)
    progress = RunProgress("Spring Sale!", 10, limits)  # no Prefect API here: best effort
    progress.advance(6, 1)
    assert progress.key == "spring-sale-progress"
    assert progress.percent == 70.0
    text = progress.describe()
    assert "sent 6, failed 1" in text
    assert "20 msgs/s for the whole run, one slot every 0.05 s" in text
    assert "concurrency limit: none" in text
