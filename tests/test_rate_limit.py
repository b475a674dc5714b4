"""The run's rate limit holds across worker processes, evenly: per-second counts at the server,
not a burst and then a pause.

``test_rate_limit_across_workers`` runs the whole flow (two worker processes) for a 15 s window;
MAILCAST_RATE_WINDOW=60 checks the issue's 60 s figure."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope, Session

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP
from mailcast.engine.pacing import Pacer
from mailcast.spec import load_spec
from tests.campaigns import people, write_campaign

pytestmark = pytest.mark.serial  # timing figures (or a Postgres restart): alone


class TimedHandler(CaptureHandler):
    """Records when each message was accepted (the end of DATA), on the monotonic clock."""

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        self.server.times.append(time.monotonic())  # type: ignore[attr-defined]
        return await super().handle_DATA(smtp, session, envelope)


class TimedServer(CaptureServer):
    handler_class = TimedHandler

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.times: list[float] = []


def per_second(times: list[float]) -> list[int]:
    """Messages in each whole second from the first message, the last (partial) second left
    out."""
    start = times[0]
    seconds = int(times[-1] - start)
    counts = [0] * seconds
    for t in times:
        i = int(t - start)
        if i < seconds:
            counts[i] += 1
    return counts


def _pace(path: str, rate: float, n: int, start_at: float, out: Any) -> None:
    pacer = Pacer(rate, path)
    while time.monotonic() < start_at:
        time.sleep(0.001)
    stamps = []
    for _ in range(n):
        pacer.wait()
        stamps.append(time.monotonic())
    out.put(stamps)


def test_pacer_shared_by_processes_keeps_one_rate(tmp_path: Path) -> None:
    """Two processes pacing through one slot file send at the rate together, evenly spaced."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    rate, n = 50.0, 50
    start_at = time.monotonic() + 1.5  # both started (spawn takes a moment) before pacing
    procs = [
        ctx.Process(target=_pace, args=(str(tmp_path / "pace"), rate, n, start_at, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    stamps = sorted(out.get(timeout=30) + out.get(timeout=30))
    for p in procs:
        p.join(10)
    took = stamps[-1] - stamps[0]
    assert took == pytest.approx((2 * n - 1) / rate, rel=0.1)  # 100 slots of 20 ms, not 50
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert statistics.median(gaps) == pytest.approx(1 / rate, rel=0.25)
    assert max(gaps) < 5 / rate  # no pause after a burst


@pytest.mark.slow
def test_rate_limit_across_workers(
    tmp_path: Path, prefect_harness: None, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 msgs/s with two worker processes: 20 ± 1 msgs/s over the window, and no second far
    from 20 (a burst-then-sleep limiter would show 40s and 0s)."""
    from mailcast.flows.campaign import send_campaign

    rate = 20
    window = int(os.environ.get("MAILCAST_RATE_WINDOW", "15"))
    rows = people(rate * (window + 2))
    spec = write_campaign(
        tmp_path,
        rows,
        attachments=False,
        spec_extra={"rate_limit": rate, "workers": 2, "connections": 4, "chunk_size": 50},
    )
    monkeypatch.setenv("MAILCAST_DATABASE_URL", pg_url)
    with TimedServer() as server:
        summary = send_campaign(spec=load_spec(spec), dry_run=False, smtp_url=server.url)
        times = sorted(server.times)
    assert summary.counts["sent"] == len(rows)
    counts = per_second(times)
    overall = (len(times) - 1) / (times[-1] - times[0])
    print(
        f"rate limit {rate}/s, 2 workers: {overall:.2f} msgs/s over {times[-1] - times[0]:.1f}s;"
        f" per second min {min(counts)}, max {max(counts)},"
        f" stdev {statistics.pstdev(counts):.2f}; {server.connections} connections"
    )
    assert rate - 1 <= overall <= rate + 1
    assert all(rate - 3 <= c <= rate + 3 for c in counts), counts
    assert server.connections >= 2  # both workers sent
