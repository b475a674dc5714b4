"""The ledger database goes away in the middle of a send (a real Postgres server, stopped and
started again): the run waits, then continues; no row is sent twice and none is forgotten.
And after a crash, rows only reserved are trusted to be unsent only while the database server
has been up since they were claimed (its hand-overs are committed without waiting for the
disk)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP
from mailcast.engine.chunk import send_chunk
from mailcast.engine.control import RunControl
from mailcast.engine.loop import MAX_BATCH
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import prepare_run
from mailcast.spec import load_spec
from mailcast.transport.factory import Target
from tests import pg_private
from tests.campaigns import people, write_campaign

pytestmark = pytest.mark.serial  # timing figures (or a Postgres restart): alone

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def private_pg() -> Iterator[pg_private.PrivatePostgres]:
    why = pg_private.available()
    if why:
        if IN_CI:
            pytest.fail(f"CI needs a private Postgres cluster for this test: {why}")
        pytest.skip(why)
    server = pg_private.PrivatePostgres().init()
    server.start()
    try:
        yield server
    finally:
        from mailcast.ledger import schema

        for key, engine in list(schema._engines.items()):
            if str(server.port) in key:
                engine.dispose()
                del schema._engines[key]
        server.destroy()


class SlowHandler(CaptureHandler):
    """Accepts every message after 10 ms: a send long enough to take the database away."""

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.01)
        return await super().handle_DATA(smtp, session, envelope)


class SlowServer(CaptureServer):
    handler_class = SlowHandler


def _plan(tmp_path: Path, url: str, n: int, **extra: Any) -> tuple[Any, str, Ledger]:
    extra = {"crash_window": "ledger", **extra}  # each message handed over in the ledger
    spec = load_spec(write_campaign(tmp_path, people(n), attachments=False, spec_extra=extra))
    target = Target(smtp_url="smtp://127.0.0.1:1?security=none")
    planned = prepare_run(url, spec, target)
    return spec, planned.run_id, Ledger(url)


@pytest.mark.slow
@pytest.mark.parametrize("crash_window", ["ledger", "message"])
def test_a_send_waits_for_the_ledger_and_continues(
    tmp_path: Path, private_pg: pg_private.PrivatePostgres, crash_window: str
) -> None:
    n, connections, down = 2000, 4, 10.0
    spec, run_id, ledger = _plan(tmp_path, private_pg.url, n, crash_window=crash_window)
    ids = list(ledger.all_pending_ids(run_id))
    result: dict[str, Any] = {}

    with SlowServer() as server:

        def send() -> None:
            try:
                result["chunk"] = send_chunk(
                    spec, run_id, (ids[0], ids[-1]), private_pg.url,
                    Target(smtp_url=server.url), threads=connections,
                    control=RunControl(retry_base=0.2, max_retry_seconds=120,
                                       pause_after_failures=0),
                )  # fmt: skip
            except BaseException as exc:  # reported below
                result["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 60
        while len(server.messages) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(server.messages) >= 300, "the send did not get going"

        private_pg.stop("fast")  # the ledger goes away mid-send
        at_stop = len(server.messages)
        time.sleep(down)
        during = len(server.messages) - at_stop
        private_pg.start()
        sender.join(120)
        assert not sender.is_alive(), "the send did not finish after the ledger came back"
        copies = Counter(m.rcpt_tos[0] for m in server.messages)

    assert "error" not in result, result.get("error")
    # While the ledger was down nothing new went out: each connection finished at most the
    # message it had on the wire (hand-overs in the ledger), or the rows it had claimed before
    # (hand-overs in the journal: a claim is at most MAX_BATCH rows).
    most = connections if crash_window == "ledger" else connections * MAX_BATCH
    assert during <= most, f"{during} messages sent while the ledger was down"
    counts = ledger.counts(run_id)
    print(
        f"\nledger down {down:.0f}s after {at_stop} messages; {during} finished meanwhile;"
        f" then: {', '.join(f'{s} {v}' for s, v in counts.items() if v)}"
    )
    assert result["chunk"].sent == n
    assert counts["sent"] == n and counts["sending"] == counts["pending"] == 0
    assert len(copies) == n and max(copies.values()) == 1  # nobody twice, nobody forgotten


def test_reservations_are_not_trusted_after_the_database_restarted(
    tmp_path: Path, private_pg: pg_private.PrivatePostgres
) -> None:
    """A crash leaves 5 rows claimed, 1 of them handed over. While the server stays up, a resume
    sends the 4 reserved ones; after a restart of the server (which may have lost a hand-over
    committed without waiting for the disk) all 5 are in doubt."""
    _spec, run_id, ledger = _plan(tmp_path, private_pg.url, 20)
    ids = list(ledger.all_pending_ids(run_id))

    def crash_leaving_five() -> None:
        claims = ledger.claim_ids(run_id, ids[:5], token="crashed")
        assert len(claims) == 5
        ledger.exchange(run_id, token="crashed", hand_over=[claims[0].id])

    crash_leaving_five()
    assert ledger.mark_unknown(run_id) == 1  # server up all along: 4 back to pending
    assert ledger.counts(run_id)["pending"] == 19

    _spec, run_id, ledger = _plan(tmp_path / "again", private_pg.url, 20)
    ids = list(ledger.all_pending_ids(run_id))
    crash_leaving_five()
    time.sleep(0.1)  # the claim is clearly older than the restart
    private_pg.stop("fast")
    private_pg.start()
    assert ledger.mark_unknown(run_id) == 5  # restarted since the claim: trust no reservation
    assert ledger.counts(run_id)["pending"] == 15


def test_a_ledger_away_longer_than_the_retry_time_stops_the_run_with_the_reason(
    tmp_path: Path, private_pg: pg_private.PrivatePostgres
) -> None:
    """The database goes away for longer than the run may wait: the run stops itself (one line,
    where, and the resume hint), and nothing was sent that the ledger does not know about."""
    from mailcast.errors import RunStopped

    spec, run_id, ledger = _plan(tmp_path, private_pg.url, 1000)
    ids = list(ledger.all_pending_ids(run_id))
    caught: list[BaseException] = []
    with SlowServer() as server:

        def send() -> None:
            try:
                send_chunk(
                    spec, run_id, (ids[0], ids[-1]), private_pg.url,
                    Target(smtp_url=server.url), threads=2,
                    control=RunControl(retry_base=0.1, max_retry_seconds=1.5),
                )  # fmt: skip
            except BaseException as exc:
                caught.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        while len(server.messages) < 50 and sender.is_alive():
            time.sleep(0.01)
        private_pg.stop("fast")
        at_stop = len(server.messages)
        sender.join(60)
        assert not sender.is_alive()
        sent = len(server.messages)
    private_pg.start()
    assert sent - at_stop <= 2  # each connection finished at most the message on the wire
    assert len(caught) == 1 and isinstance(caught[0], RunStopped), caught
    stopped = caught[0]
    assert "the ledger database could not be reached" in stopped.message
    assert f"mailcast resume {run_id}" in (stopped.hint or "")
    assert str(private_pg.port) in (stopped.where or "")
    # the ledger knows every message that went out: resume marks at most those unknown
    unknown = ledger.mark_unknown(run_id)
    counts = ledger.counts(run_id)
    assert counts["sent"] + unknown >= sent - 2 and counts["sending"] == 0
    assert counts["sent"] + unknown + counts["pending"] == 1000
