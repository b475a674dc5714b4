"""The tracking scenario: ``mailcast serve --workers 2`` under 50 concurrent clients fetching
pixels and following click links, against a bare Starlette endpoint that records nothing
(the same routes, the same answers, the same uvicorn and workers), in the same run.

``run_tracking`` is what ``python -m bench --only tracking`` runs; ``measure`` runs in the
scenario's own process (``python -m bench.scenarios tracking``): it seeds a fresh Postgres
ledger (1,000 deliveries of one run, 3 links), starts ``mailcast serve``, warms it up, sends
``n`` requests (pixel and click alternately, each client on one keep-alive connection), stops
the service with SIGTERM and counts the events written (every answered request must have
one), then does the same against the bare app. The load client is a small asyncio HTTP/1.1
loop (no httpx: at these rates the client's own cost would be the figure).

Run the bare app alone: ``python -m bench.tracking --port 8099 --workers 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from bench.__main__ import Bench

SECRET = "bench-tracking-secret-0123456789"
CLIENTS = 50
WORKERS = 2
DELIVERIES = 1000
WARMUP = 1000
LINKS = ["https://shop.example/spring?utm_source=mail", "https://shop.example/account",
         "https://shop.example/privacy"]  # fmt: skip
PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def bare_app() -> Starlette:
    """The baseline: the tracking routes answering the same way, recording nothing."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse, Response
    from starlette.routing import Route

    async def pixel(request: Request) -> Response:
        return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})

    async def click(request: Request) -> Response:
        return RedirectResponse(LINKS[0], status_code=302, headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/o/{token}.gif", pixel), Route("/c/{token}", click)])


# -- the load ---------------------------------------------------------------------------------------


async def _client(
    port: int, requests: list[bytes], latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for request in requests:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - t)
            status = head[9:12]
            if status not in (b"200", b"302"):
                errors.append(status.decode())
    finally:
        writer.close()


def load(port: int, paths: list[str], n: int, clients: int = CLIENTS) -> dict[str, Any]:
    """``n`` GETs of ``paths`` (in turn) from ``clients`` concurrent keep-alive connections."""
    requests = [
        f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: t.bench.example\r\n"
        f"User-Agent: Mozilla/5.0 (bench)\r\n\r\n".encode()
        for i in range(n)
    ]
    per = [requests[i::clients] for i in range(clients)]
    latencies: list[float] = []
    errors: list[str] = []

    async def main() -> float:
        t = time.perf_counter()
        await asyncio.gather(*(_client(port, p, latencies, errors) for p in per if p))
        return time.perf_counter() - t

    seconds = asyncio.run(main())
    latencies.sort()
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "rate": len(latencies) / seconds,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "max_ms": latencies[-1] * 1000,
        "errors": len(errors),
    }


# -- the servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(
    cmd: list[str], port: int, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    import httpx

    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/o/x.gif", timeout=1)
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[2:5]} did not start (see {log})")
            time.sleep(0.2)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def seed(db: str) -> tuple[str, list[str]]:
    """A run with DELIVERIES deliveries and the LINKS; (run id, request paths)."""
    from mailcast.engagement import tokens
    from mailcast.ledger import events
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import Recipient

    ledger = Ledger(db)
    run_id = ledger.create_run(f"bench-tracking-{uuid.uuid4().hex[:6]}", {}, dry_run=False,
                               transport=None)  # fmt: skip
    people = [Recipient(i + 2, f"r{i}@example.com", {}, key=f"r{i}@example.com")
              for i in range(DELIVERIES)]  # fmt: skip
    ledger.plan(run_id, people, ["email"])
    ids = [int(i) for i in ledger.all_pending_ids(run_id)]
    links = events.register_links(ledger.engine, run_id, [(u, p) for p, u in enumerate(LINKS, 1)])
    key = SECRET.encode()
    paths = []
    for i, did in enumerate(ids):
        paths.append(f"/o/{tokens.make(key, tokens.OPEN, did)}.gif")
        paths.append(f"/c/{tokens.make(key, tokens.CLICK, did, links[LINKS[i % len(LINKS)]])}")
    return run_id, paths


def count_events(db: str, run_id: str) -> int:
    from sqlalchemy import func, select

    from mailcast.ledger.models import Event
    from mailcast.ledger.store import Ledger

    table = Event.__table__
    with Ledger(db).engine.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.run_id == run_id)  # type: ignore[attr-defined]
        return int(conn.execute(query).scalar() or 0)


def measure(db: str, n: int, workdir: Path, workers: int = WORKERS) -> dict[str, Any]:
    run_id, paths = seed(db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILCAST_")}
    env.update({"MAILCAST_TRACKING_SECRET": SECRET,
                "MAILCAST_DATA_DIR": str(workdir / "mailcast-data")})  # fmt: skip
    log = workdir / "tracking-serve.log"
    result: dict[str, Any] = {"workers": workers, "clients": CLIENTS}
    port = free_port()
    cmd = [sys.executable, "-m", "mailcast", "serve", "--db", db, "--port", str(port),
           "--workers", str(workers), "--log-level", "warning"]  # fmt: skip
    with server(cmd, port, env, log) as proc:
        load(port, paths, WARMUP)
        result["mailcast"] = load(port, paths, n)
        t = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
        result["stop_seconds"] = time.perf_counter() - t
    answered = WARMUP + result["mailcast"]["requests"] - result["mailcast"]["errors"]
    result["answered"] = answered
    result["events"] = count_events(db, run_id)
    port = free_port()
    cmd = [sys.executable, "-m", "bench.tracking", "--port", str(port), "--workers", str(workers)]
    with server(cmd, port, env, workdir / "tracking-bare.log"):
        load(port, paths, WARMUP)
        result["bare"] = load(port, paths, n)
    return result


def run_tracking(bench: Bench) -> None:
    """The scenario, once (its figure is a rate, not a median of runs)."""
    n = bench.sizes["tracking"]
    bench.say(f"tracking: {n:,} pixel/click requests from {CLIENTS} clients, mailcast serve "
              f"--workers {WORKERS} vs bare Starlette")  # fmt: skip
    with bench.database() as db:
        run = bench.scenario("tracking", ["tracking", "--db", db, "-n", str(n)],
                             timeout=bench.args.run_timeout)  # fmt: skip
    target = "≥ 2,000 req/s, p99 < 50 ms"
    if bench.failed("tracking", n, [run], target):
        return
    r = run.result
    ours, bare = r["mailcast"], r["bare"]
    complete = r["events"] == r["answered"] and ours["errors"] == 0
    met = ours["rate"] >= 2000 and ours["p99_ms"] < 50 and complete
    bench.add(f"tracking: mailcast serve --workers {WORKERS}", ours["requests"],
              f"{ours['rate']:,.0f} req/s, p50 {ours['p50_ms']:.1f} ms, p99 {ours['p99_ms']:.1f} ms",
              f"bare {bare['rate']:,.0f} req/s, p99 {bare['p99_ms']:.1f} ms",
              f"{ours['rate'] / bare['rate']:.2f}×", run.rss_mb, target, met)  # fmt: skip
    bench.notes.append(
        f"tracking: {CLIENTS} clients (asyncio keep-alive connections, in one process), pixel and "
        f"click alternately over {DELIVERIES:,} deliveries (the link cache is warm after the "
        f"{WARMUP:,}-request warm-up); events written {r['events']:,} of {r['answered']:,} "
        f"answered ({'none lost' if complete else 'NOT all'}); the SIGTERM stop took "
        f"{r['stop_seconds']:.1f} s; bare: p50 {bare['p50_ms']:.1f} ms, max {bare['max_ms']:.0f}"
        f" ms; mailcast max {ours['max_ms']:.0f} ms"
    )


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="the bare tracking endpoint (records nothing)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=WORKERS)
    args = ap.parse_args()
    uvicorn.run("bench.tracking:bare_app", factory=True, host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning", server_header=False)  # fmt: skip


if __name__ == "__main__":
    main()
