"""A 1,000-recipient campaign through the engine to a fake API, with faults: what every HTTP
API transport's end-to-end test asserts (every row final, no message twice, the provider's ids
kept)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailcast.engine import chunk as chunk_module
from mailcast.errors import AuthError
from mailcast.transport.base import Reply, Transport
from tests.fakes.contract import Provider
from tests.fakes.http_fake import Fault
from tests.test_faults import Run, plan

N = 1000
# recipients the faults single out
TIMED_OUT = "person500@example.com"  # received, then no answer: unknown
REJECTED = "person700@example.com"  # a 400 for the message: failed


def faults() -> list[Fault]:
    """Throttling (429, and the quota answer), 5xx, a timeout after the request was received
    and a permanent refusal, spread over the run."""
    return [
        Fault("throttle", times=4, skip=50, retry_after=0),
        Fault("quota", times=2, skip=250),
        Fault("error", times=3, skip=400),
        Fault("timeout", recipient=TIMED_OUT),
        Fault("reject", recipient=REJECTED),
    ]


class Recording:
    """A transport that keeps the provider id of each acceptance (until the ledger stores it)."""

    def __init__(self, inner: Transport, replies: dict[str, Reply]) -> None:
        self.inner = inner
        self.where = inner.where
        self.replies = replies
        self._lock = threading.Lock()

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        reply = self.inner.send(sender, recipient, message)
        with self._lock:
            assert recipient not in self.replies, recipient
            self.replies[recipient] = reply
        return reply


def use_transport(
    monkeypatch: pytest.MonkeyPatch, new: Callable[[], Transport], replies: dict[str, Reply]
) -> None:
    """Make the engine's connections use ``new()`` transports."""
    monkeypatch.setattr(
        chunk_module, "_transports", lambda target: lambda: Recording(new(), replies)
    )


def plan_run(folder: Path, n: int = N, **spec_extra: Any) -> Run:
    extra = {"connections": 4, "max_attempts": 5, "pause_after_failures": 0, **spec_extra}
    return plan(folder, None, n, url="smtp://127.0.0.1:9", **extra)  # type: ignore[arg-type]


def check_campaign_with_faults(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: Provider
) -> None:
    """1,000 recipients through the engine (4 connections) to the provider's fake with
    ``faults()``: every row final, no message twice, each acceptance's provider id kept."""
    replies: dict[str, Reply] = {}
    with provider.fake(*faults(), hang=1.0) as fake:
        use_transport(monkeypatch, lambda: provider.transport(fake.base_url, True, 0.5), replies)
        run = plan_run(folder)
        run.send()
    rows = run.rows()
    statuses = {a: r["status"] for a, r in rows.items()}
    expected = dict.fromkeys(run.addresses, "sent") | {TIMED_OUT: "unknown", REJECTED: "failed"}
    assert statuses == expected
    assert rows[REJECTED]["smtp_code"] == 400 and "rejected" in rows[REJECTED]["reason"]
    assert "may have been delivered" in rows[TIMED_OUT]["reason"]
    codes = {r["smtp_code"] for r in rows.values() if r["status"] == "sent"}
    assert codes == {provider.success_code}
    # no message twice; the timed-out one reached the provider once (and is not sent again)
    assert fake.counts() == dict.fromkeys(set(run.addresses) - {REJECTED}, 1)
    assert fake.answered[429] + fake.answered[401] >= 6 and fake.answered[500] == 3
    # the provider's ids: one per accepted message, each the one the fake gave it
    ids = {r.recipient: r.provider_id.strip("<>") for r in fake.received}
    assert {a: r.provider_message_id for a, r in replies.items()} == {a: ids[a] for a in replies}
    assert len(replies) == N - 2
    assert run.finish() == "completed"


def check_bad_credentials_stop_the_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: Provider
) -> None:
    """A wrong key stops the run at its first answer, nobody is marked failed; with the right
    key the run then finishes, every message once."""
    replies: dict[str, Reply] = {}
    with provider.fake() as fake:
        use_transport(monkeypatch, lambda: provider.transport(fake.base_url, False, 5.0), replies)
        run = plan_run(folder, 100)
        with pytest.raises(AuthError):
            run.send()
        assert {r["status"] for r in run.rows().values()} == {"pending"}
        assert fake.received == []
        use_transport(monkeypatch, lambda: provider.transport(fake.base_url, True, 5.0), replies)
        run.send()
    assert {r["status"] for r in run.rows().values()} == {"sent"}
    assert fake.counts() == dict.fromkeys(run.addresses, 1)
    assert run.finish() == "completed"
