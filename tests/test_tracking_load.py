"""The tracking service under load: opens and clicks are queued and written in batches (one
multi-row INSERT, the same rows as one at a time), the answer never waits for the database
(the pixel answers while it is down, the events are written when it is back), and a graceful
stop of ``mailcast serve --workers 2`` (SIGTERM during load) loses no event; a SIGKILL loses
at most the last second."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, select

from mailcast.engagement import tokens
from mailcast.engagement.writer import EventWriter, Pending
from mailcast.ledger import events
from mailcast.ledger.models import Event, utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient
from tests.test_tracking import Service, free_port

SECRET = "load-tracking-secret-0123456789"
KEY = SECRET.encode()
E = Event.__table__


@pytest.fixture
def ledger_url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    Ledger(db_url)
    return db_url


def make_run(url: str, n: int) -> tuple[str, list[int], dict[str, int]]:
    """A run with ``n`` deliveries and two registered links: (run id, delivery ids, url → id)."""
    ledger = Ledger(url)
    run_id = ledger.create_run(f"load-{uuid.uuid4().hex[:8]}", {}, dry_run=False, transport=None)
    people = [
        Recipient(i + 2, a, {}, key=a)
        for i in range(n)
        for a in [f"p{i}-{uuid.uuid4().hex[:6]}@example.com"]
    ]
    ledger.plan(run_id, people, ["email"])
    ids = [int(i) for i in ledger.all_pending_ids(run_id)]
    links = events.register_links(
        ledger.engine,
        run_id,
        [("https://shop.example/a?x=1&y=2", 1), ("https://shop.example/b", 2)],
    )
    return run_id, ids, links


def run_events(url: str, run_id: str) -> list[tuple[int, str, Any]]:
    with Ledger(url).engine.connect() as conn:
        rows = conn.execute(
            select(E.c.delivery_id, E.c.kind, E.c.detail)
            .where(E.c.run_id == run_id)
            .order_by(E.c.id)
        ).all()
    return [(int(d), str(k), detail) for d, k, detail in rows]


def count_events(url: str, run_id: str) -> int:
    with Ledger(url).engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(E).where(E.c.run_id == run_id)).scalar()
            or 0
        )


@contextlib.contextmanager
def statements(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(" ".join(sql.split()))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listen)


# -- the batch statement --------------------------------------------------------------------------


def test_a_batch_is_one_multi_row_insert_with_the_rows_written_one_at_a_time(
    ledger_url: str,
) -> None:
    run_id, (a, b, *rest), _links = make_run(ledger_url, 4)
    engine = Ledger(ledger_url).engine
    at = utcnow()
    click = {"link_id": 7, "url": "https://shop.example/a?x=1&y=2", "position": 1,
             "user_agent": "Mozilla/5.0 'quoted' \"agent\""}  # fmt: skip
    for kind, detail in (("open", {"user_agent": "Mail/1.0"}), ("open", None), ("click", click)):
        assert events.record_event(engine, a, kind, detail, occurred_at=at)
    batch: list[Pending] = [
        (b, "open", {"user_agent": "Mail/1.0"}, at),
        (b, "open", None, at),
        (b, "click", click, at),
        (999_999_999, "open", None, at),  # no such delivery: left out, as record_event does
    ]
    with statements(engine) as seen:
        assert events.record_event_batch(engine, batch) == 3
    inserts = [s for s in seen if s.upper().startswith("INSERT INTO EVENTS")]
    assert len(inserts) == 1 and inserts[0].count("(") >= 4  # one statement, three rows
    rows = run_events(ledger_url, run_id)
    assert [(k, d) for i, k, d in rows if i == a] == [(k, d) for i, k, d in rows if i == b]
    assert [k for i, k, _d in rows if i == b] == ["open", "open", "click"]
    with engine.connect() as conn:
        times = conn.execute(select(E.c.occurred_at).where(E.c.run_id == run_id)).scalars().all()
    assert len({t.replace(tzinfo=None) for t in times}) == 1  # the queued time, kept

    # 2,500 events: one SELECT of the deliveries' runs, three INSERTs of at most 1,000 rows
    many: list[Pending] = [(rest[i % 2], "open", None, at) for i in range(2500)]
    with statements(engine) as seen:
        assert events.record_event_batch(engine, many) == 2500
    assert len([s for s in seen if s.upper().startswith("INSERT INTO EVENTS")]) == 3
    assert count_events(ledger_url, run_id) == 2506


# -- the queue's writer, with a write function that fails -----------------------------------------


class Flaky:
    """A write function whose first ``failures`` calls fail as an unreachable database does."""

    def __init__(self, failures: int, error: type[Exception] | None = None) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.rows: list[Pending] = []

    def __call__(self, batch: Sequence[Pending]) -> int:
        from sqlalchemy.exc import OperationalError

        self.calls += 1
        if self.calls <= self.failures:
            if self.error is not None:
                raise self.error("a statement the database refuses")
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        self.rows.extend(batch)
        return len(batch)


def test_the_writer_keeps_events_while_the_database_is_down_and_writes_them_after() -> None:
    write = Flaky(failures=3)
    writer = EventWriter(write, interval=0.05, retry_max=0.1)
    for i in range(100):
        assert writer.put(i, "open", None)
    deadline = time.monotonic() + 10
    while len(write.rows) < 100 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r[0] for r in write.rows] == list(range(100))  # all, once, in order
    assert write.calls >= 4 and writer.written == 100
    assert writer.close() == 0


def test_past_the_bound_new_events_are_refused_and_counted() -> None:
    write = Flaky(failures=10**9)  # the database never comes back
    writer = EventWriter(write, interval=0.05, retry_max=0.05, limit=1000, drain_seconds=0.3)
    accepted = sum(writer.put(i, "open", None) for i in range(1500))
    assert accepted == 1000 and writer.dropped == 500
    assert writer.close() == 1000  # the stop tried for drain_seconds, then gave up: lost, logged
    assert write.rows == []


def test_a_batch_the_database_refuses_is_written_event_by_event() -> None:
    ones: list[Pending] = []

    def one(item: Pending) -> None:
        if item[0] == 3:
            raise ValueError("a bad event")
        ones.append(item)

    writer = EventWriter(Flaky(failures=1, error=ValueError), one, interval=0.05)
    for i in range(6):
        writer.put(i, "click", {"n": i})
    assert writer.close() == 0
    assert [r[0] for r in ones] == [0, 1, 2, 4, 5] and writer.failed == 1


def test_a_graceful_stop_writes_everything_queued() -> None:
    write = Flaky(failures=0)
    writer = EventWriter(write, interval=60)  # the stop, not the timer, writes them
    for i in range(5000):
        writer.put(i, "open", None)
    assert writer.close() == 0 and len(write.rows) == 5000


# -- the service over HTTP ------------------------------------------------------------------------


def test_the_service_answers_at_once_and_writes_the_same_events(ledger_url: str) -> None:
    run_id, ids, links = make_run(ledger_url, 3)
    a, b, _c = ids
    spring = links["https://shop.example/a?x=1&y=2"]
    with Service(ledger_url) as service, httpx.Client(timeout=10) as client:
        engine = service.server.config.app.state.service.engine  # type: ignore[union-attr]
        r = client.get(f"{service.url}/o/{tokens.make(KEY, tokens.OPEN, a)}.gif",
                       headers={"User-Agent": "Mail/1.0"})  # fmt: skip
        assert r.status_code == 200 and r.content.startswith(b"GIF89a")
        assert client.head(f"{service.url}/o/{tokens.make(KEY, tokens.OPEN, b)}.gif").is_success
        with statements(engine) as seen:
            for _ in range(3):
                r = client.get(f"{service.url}/c/{tokens.make(KEY, tokens.CLICK, b, spring)}")
                assert r.status_code == 302
                assert r.headers["location"] == "https://shop.example/a?x=1&y=2"
        assert len([s for s in seen if "FROM links" in s]) == 1  # then from the cache
        # a link of another run is no redirect, cached or not
        other_run, (other,), _ = make_run(ledger_url, 1)
        assert client.get(f"{service.url}/c/{tokens.make(KEY, tokens.CLICK, other, spring)}").status_code == 404  # fmt: skip
        assert client.get(f"{service.url}/o/{tokens.make(KEY, tokens.OPEN, a)[:-4]}aaaa.gif").status_code == 404  # fmt: skip
        deadline = time.monotonic() + 5  # written within the second, without a stop
        while count_events(ledger_url, run_id) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_events(ledger_url, run_id) == 4
    click = {"link_id": spring, "url": "https://shop.example/a?x=1&y=2", "position": 1,
             "user_agent": f"python-httpx/{httpx.__version__}"}  # fmt: skip
    assert run_events(ledger_url, run_id) == [
        (a, "open", {"user_agent": "Mail/1.0"}),
        (b, "click", click),
        (b, "click", click),
        (b, "click", click),
    ]
    assert count_events(ledger_url, other_run) == 0


class Proxy:
    """A TCP proxy to Postgres that can be cut (connections refused, open ones closed) and
    restored on the same port: a database that stops answering."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_the_pixel_answers_while_the_database_is_down_and_the_events_come_after(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import make_url

    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    Ledger(pg_url)
    run_id, ids, _links = make_run(pg_url, 20)
    real = make_url(pg_url)
    proxy = Proxy((real.host or "127.0.0.1", real.port or 5432))
    proxy.start()
    via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with Service(via_proxy) as service, httpx.Client(timeout=5) as client:
            client.get(f"{service.url}/o/{tokens.make(KEY, tokens.OPEN, ids[0])}.gif")
            deadline = time.monotonic() + 5
            while count_events(pg_url, run_id) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert count_events(pg_url, run_id) == 1
            proxy.cut()  # the database is gone
            slowest = 0.0
            for did in ids:
                t = time.perf_counter()
                r = client.get(f"{service.url}/o/{tokens.make(KEY, tokens.OPEN, did)}.gif")
                slowest = max(slowest, time.perf_counter() - t)
                assert r.status_code == 200 and r.content.startswith(b"GIF89a")
            assert slowest < 0.5
            time.sleep(1.5)  # the writer tries, fails, keeps them
            assert count_events(pg_url, run_id) == 1
            writer = service.server.config.app.state.service.writer  # type: ignore[union-attr]
            assert writer.pending() == 20 and writer.retries >= 1
            proxy.start()  # back
            deadline = time.monotonic() + 20
            while count_events(pg_url, run_id) < 21 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert count_events(pg_url, run_id) == 21
        opened = sorted(d for d, k, _ in run_events(pg_url, run_id) if k == "open")
        assert opened == sorted([ids[0], *ids])
    finally:
        proxy.cut()


# -- mailcast serve --workers 2, stopped during load -----------------------------------------------


@contextlib.contextmanager
def serve(url: str, workers: int = 2) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``mailcast serve --workers N`` in its own session (the supervisor and its workers)."""
    import tempfile

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCAST_")}
    env.update(
        {
            "MAILCAST_TRACKING_SECRET": SECRET,
            "MAILCAST_DATA_DIR": os.environ["MAILCAST_DATA_DIR"],
            "PYTHONFAULTHANDLER": "1",
        }
    )
    cmd = [sys.executable, "-m", "mailcast", "serve", "--db", url, "--port", str(port),
           "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally)
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                out = log.read().decode(errors="replace")
                raise RuntimeError(f"mailcast serve did not start: {out[-2000:]}")
            time.sleep(0.1)
        yield proc, base
    finally:
        with contextlib.suppress(ProcessLookupError):  # its session: the workers too
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.seek(0)
        sys.stderr.write(log.read().decode(errors="replace")[-3000:])  # shown when a test fails
        log.close()


class Load:
    """Threads firing pixel and click requests until stopped; counts the answered ones."""

    def __init__(self, base: str, ids: list[int], link: int, threads: int = 8) -> None:
        self.urls = []
        for did in ids:
            self.urls.append(f"{base}/o/{tokens.make(KEY, tokens.OPEN, did)}.gif")
            self.urls.append(f"{base}/c/{tokens.make(KEY, tokens.CLICK, did, link)}")
        self.answered = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._fire, args=(n,)) for n in range(threads)]

    def _fire(self, n: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = n
            while not self.stop.is_set():
                try:
                    r = client.get(self.urls[i % len(self.urls)])
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code in (200, 302):
                    with self.lock:
                        self.answered += 1
                else:
                    return
                i += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_a_sigterm_during_load_loses_no_event(ledger_url: str) -> None:
    run_id, ids, links = make_run(ledger_url, 50)
    link = links["https://shop.example/b"]
    with serve(ledger_url) as (proc, base), Load(base, ids, link) as load:
        deadline = time.monotonic() + 30
        while load.answered < 600 and time.monotonic() < deadline:
            time.sleep(0.02)
        # while the requests keep coming: SIGTERM to the supervisor and its workers, as
        # systemd, Docker and Kubernetes stop a service
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            assert proc.wait(60) == 0
        except subprocess.TimeoutExpired:
            os.system(f"ps -o pid,ppid,stat,wchan:20,cmd -g {proc.pid} >&2")
            raise
        load.stop.set()
    assert load.answered >= 600
    assert count_events(ledger_url, run_id) == load.answered


def test_a_sigkill_loses_at_most_the_last_second(ledger_url: str) -> None:
    run_id, ids, links = make_run(ledger_url, 20)
    link = links["https://shop.example/b"]
    with serve(ledger_url) as (proc, base):
        with Load(base, ids, link, threads=4) as load:
            time.sleep(1.0)
        answered = load.answered
        time.sleep(1.2)  # a second (and a write) after the last answer
        os.killpg(proc.pid, signal.SIGKILL)  # the supervisor and its workers
        proc.wait(10)
    assert answered > 0
    assert count_events(ledger_url, run_id) == answered


def test_serve_rejects_zero_workers(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from mailcast.cli import app

    result = CliRunner().invoke(
        app, ["serve", "--workers", "0", "--db", f"sqlite:///{tmp_path}/l.db"]
    )
    assert result.exit_code == 2
