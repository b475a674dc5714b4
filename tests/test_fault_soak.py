"""The long fault test: 5,000 recipients against a server that injects every fault kind at random
(seeded) at a 5% rate each, and goes down for 10 s in the middle of the run.

Afterwards every recipient is accounted for (sent + failed + skipped + unknown = recipients,
nothing left pending or sending), no recipient was accepted twice by the server, exactly the
rows recorded as sent were accepted, and every failure has its reason.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from mailcast.engine.control import RunControl
from mailcast.spec import CampaignSpec
from tests.smtp_faults import Event, FaultyServer, Rule, chaos_rules
from tests.test_faults import plan

pytestmark = pytest.mark.slow

RECIPIENTS = 5_000
RATE = 0.05
TIMEOUT = 1.0  # the client's SMTP timeout; a "reply that never comes" waits longer
OUTAGE_SECONDS = 10.0

FAILURE = re.compile(
    r"hard bounce: (550 5\.1\.1 No such user|553 5\.1\.3 Bad recipient address syntax) \(at RCPT\)"
    r"|rejected at DATA: 554 5\.7\.1 Message refused"
    r"|temporary failure after 5 attempts: .+"
)


def category(reason: str) -> str:
    for prefix in ("hard bounce: 550", "hard bounce: 553", "rejected at DATA: 554"):
        if reason.startswith(prefix):
            return prefix
    return reason.split(":", 1)[0]


def test_five_thousand_recipients_against_a_hostile_server(tmp_path: Path) -> None:
    outage: list[threading.Thread] = []

    def go_down(event: Event) -> bool:
        if event.nth == RECIPIENTS // 2 and not outage:
            outage.append(server.outage(OUTAGE_SECONDS))
        return False

    rules = [
        Rule("DATA_CMD", when=go_down),
        *chaos_rules(random.Random(5), rate=RATE, timeout=TIMEOUT),
    ]
    server = FaultyServer(*rules, idle_timeout=60)
    started = time.monotonic()
    with server:
        run = plan(
            tmp_path, server, RECIPIENTS,
            retry_base_seconds=0.003, max_attempts=5, pause_after_failures=50,
            max_hard_bounce_rate=0,  # ~3 % random hard bounces: a 200-attempt window may pass 5 %
        )  # fmt: skip
        spec: CampaignSpec = run.spec
        control = RunControl.for_spec(spec)
        run.send(control, chunks=16, timeout=f"{TIMEOUT:g}")
        assert outage, "the outage never happened"
        outage[0].join()
    took = time.monotonic() - started

    rows = list(run.ledger.deliveries(run.run_id))
    counts = Counter(r["status"] for r in rows)
    reasons = Counter(category(r["reason"]) for r in rows if r["status"] in ("failed", "unknown"))
    print(
        f"\n{RECIPIENTS} recipients in {took:.0f}s: "
        + ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
        + f"; server: {len(server.messages)} accepted on {server.connections} connections, "
        f"{control.throttled} slow-downs, {control.waited():.1f}s waited"
    )
    for reason, n in reasons.most_common():
        print(f"  {n:5d}  {reason}")
    attempts = Counter(r["attempts"] for r in rows)
    print("  attempts: " + ", ".join(f"{k}×{v}" for k, v in sorted(attempts.items())))

    # every recipient accounted for, the run complete
    assert counts["sent"] + counts["failed"] + counts["skipped"] + counts["unknown"] == RECIPIENTS
    assert counts["pending"] == counts["sending"] == 0
    assert run.finish() == "completed"
    # no recipient accepted twice; every row recorded as sent was accepted, and no failed one
    # was (a row whose reply to DATA never came may have been: it is `unknown`, not failed)
    accepted = Counter(rcpt.lower() for m in server.messages for rcpt in m.rcpt_tos)
    assert max(accepted.values()) == 1
    by_status = {s: {r["address"].lower() for r in rows if r["status"] == s} for s in counts}
    assert by_status["sent"] <= set(accepted) <= by_status["sent"] | by_status.get("unknown", set())
    # every failure's reason recorded, with the server's code where it gave one
    for r in rows:
        if r["status"] == "failed":
            assert FAILURE.fullmatch(r["reason"]), r
            assert r["smtp_reply"] or "connection lost" in r["reason"], r
        elif r["status"] == "unknown":
            assert r["reason"].startswith("may have been delivered: the whole message was sent"), r
    # the faults did happen, and the run survived them
    assert counts["sent"] > RECIPIENTS * 0.8
    assert reasons["hard bounce: 550"] and reasons["rejected at DATA: 554"]
    assert control.throttled > 100
    assert took < 120
