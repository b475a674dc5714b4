"""The HTTP-provider scenario's baseline and its fake API process.

``run_http`` is the scenario ``python -m bench --only http-provider`` runs. The baseline
(``bare``): the same fake SendGrid API (``bench.api_fake``) driven by a bare httpx
client: one pre-built request body (the bench campaign's message as Mail Send JSON), posted
``n`` times from ``connections`` threads sharing one ``httpx.Client`` -- what an HTTP client
alone can do against that server on this machine. mailcast's figure is the real
``send_campaign`` flow to ``sendgrid://?base_url=...`` (bench.scenarios.mailcast).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.scenarios import HTML, SENDER, TEXT, valid_recipients

if TYPE_CHECKING:
    from bench.__main__ import Bench

KEY = "SG.bench-key"


def request_body() -> bytes:
    """A Mail Send body like the campaign's messages (subject, text and HTML, the headers)."""
    body = {
        "personalizations": [{"to": [{"email": "user@example.com"}]}],
        "from": {"email": "bench@mailcast.example", "name": SENDER.split(" <")[0]},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": TEXT}, {"type": "text/html", "value": HTML}],
        "headers": {"Message-ID": "<bench.1@mailcast.example>"},
    }
    return json.dumps(body).encode()


def bare(base_url: str, n: int, connections: int) -> dict[str, Any]:
    """``n`` pre-built requests from ``connections`` threads over one shared client."""
    body = request_body()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = base_url.rstrip("/") + "/v3/mail/send"
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    failures: list[int] = []
    with httpx.Client(limits=limits, timeout=30) as client:
        client.post(url, content=body, headers=headers)  # connected before the clock runs

        def worker(count: int) -> None:
            for _ in range(count):
                status = client.post(url, content=body, headers=headers).status_code
                if status != 202:
                    failures.append(status)

        per = [n // connections + (1 if i < n % connections else 0) for i in range(connections)]
        threads = [threading.Thread(target=worker, args=(c,)) for c in per]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - t
    if failures:
        raise SystemExit(f"{len(failures)} requests failed: {sorted(set(failures))}")
    return {"messages": n, "seconds": seconds, "request_bytes": len(body)}


def stats(base_url: str) -> dict[str, Any]:
    return dict(httpx.get(base_url.rstrip("/") + "/stats", timeout=10).json())


@contextlib.contextmanager
def fake_api(env: dict[str, str], log: Path) -> Iterator[str]:
    """``bench.api_fake`` in its own process; yields its base URL."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.api_fake", "--key", KEY],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            raise RuntimeError(f"the fake API did not start (see {log})")
        base_url = f"http://127.0.0.1:{line[1]}"
        for _ in range(100):  # listening once it answers
            with contextlib.suppress(httpx.HTTPError):
                stats(base_url)
                break
            time.sleep(0.1)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_http(bench: Bench) -> None:
    """The scenario: the bare client with 1 and with ``4 × WORKERS`` connections, then the
    flow with as many connections, each repetition against a fresh fake (its counts are the
    run's: every message accepted once)."""
    from bench.__main__ import WORKERS, med, peak

    n = bench.sizes["http"]
    valid = valid_recipients(n)
    connections = 4 * WORKERS
    spec = {"connections": connections, "chunk_size": 1000}
    bench.say(f"http-provider: {n:,} recipients to a fake SendGrid API, {spec} × {bench.repeat}")
    bench.env["MAILCAST_SENDGRID_API_KEY"] = KEY
    try:
        with fake_api(bench.env, bench.logs / "api-fake-bare.log") as base:
            bare = {
                c: [
                    bench.scenario(f"http-bare-{c}", ["http-bare", "--base-url", base, "-n",
                                  str(valid), "--connections", str(c)])
                    for _ in range(bench.repeat)
                ]
                for c in (1, connections)
            }  # fmt: skip
        runs, checks = [], []
        for i in range(bench.repeat):
            with fake_api(bench.env, bench.logs / f"api-fake-{i}.log") as base:
                url = f"sendgrid://?base_url={base}"
                runs.append(bench.mailcast("http-provider", n, url, spec,
                                          timeout=bench.args.run_timeout))  # fmt: skip
                checks.append(stats(base))
    finally:
        del bench.env["MAILCAST_SENDGRID_API_KEY"]
    rates_bare = {}
    for c, brs in bare.items():
        if not bench.failed(f"http-bare ({c})", valid, brs, "baseline"):
            rates_bare[c] = med(r.result["messages"] / r.result["seconds"] for r in brs if r.ok)
            bench.add(f"bare httpx, {c} connection{'s' * (c > 1)} (fake API)", valid,
                     f"{rates_bare[c]:,.0f} msgs/s", rss=peak(brs), target="baseline")  # fmt: skip
    target = "(the ratio is the figure)"
    if bench.failed("http-provider", n, runs, target):
        return
    good = [r for r in runs if r.ok]
    whole = med(r.result["messages"] / r.result["seconds"] for r in good)
    phase = med(r.ledger["send_rate"] for r in good if r.ledger.get("send_rate"))
    base_rate = rates_bare.get(connections)
    for label, rate in (("whole run", whole), ("send phase", phase)):
        ratio = f"{rate / base_rate:.2f}×" if base_rate else ""
        bench.add(f"mailcast → fake SendGrid ({label})", n, f"{rate:,.0f} msgs/s",
                 f"bare ×{connections} {base_rate:,.0f}" if base_rate else "(no bare)", ratio,
                 peak(runs), target)  # fmt: skip
    once = all(c["duplicates"] == 0 and c["accepted"] == valid for c in checks)
    bench.notes.append(
        f"http-provider: spec {bench.spec_note(spec)}; the fake API (bench/api_fake.py, uvicorn,"
        f" its own process) accepted {[c['accepted'] for c in checks]} of {valid:,} valid, "
        f"duplicates {[c['duplicates'] for c in checks]} ({'each once' if once else 'NOT once'})"
        f"; whole-run seconds {[round(r.result['seconds'], 1) for r in good]}; send phase = "
        f"first→last sent_at: {[round(r.ledger.get('send_seconds', 0), 1) for r in good]} s; "
        f"mailcast's CPU per message sent, µs: "
        f"{[round(1e6 * r.result.get('cpu_seconds', 0) / max(r.result['messages'], 1)) for r in good]}"
        f"; bare = one pre-built Mail Send body posted from N threads over one httpx client"
    )
