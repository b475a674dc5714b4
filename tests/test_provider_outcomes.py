"""An API provider's outcomes through the engine into the ledger, on SQLite and Postgres, in
each crash window (``batch``: outcomes recorded with the next claim; ``ledger``: with the next
hand-over, the libpq prepared-statement path on Postgres; ``journal``: the local journal, the
outcomes with the next claim): the provider's message id on every accepted row, its refusals
recorded with its code and text (never as an SMTP code), and ``retry --failed`` reopening the
temporary failures only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailcast.engine.control import RunControl
from mailcast.engine.journal import new_token
from mailcast.engine.loop import run_connection
from mailcast.engine.summary import summarize_run
from mailcast.errors import ConnectionLost, DeliveryRefused, RefusalKind
from mailcast.ledger.models import FAILED
from mailcast.ledger.store import Claim, Ledger
from mailcast.recipients import Recipient
from mailcast.transport.base import Reply
from tests.ledger_rows import EVERY_ID

REFUSALS: dict[str, Exception] = {
    "rejected@example.com": DeliveryRefused(
        400, "MessageRejected: Email address is not verified.", kind=RefusalKind.PERMANENT
    ),
    "down@example.com": DeliveryRefused(503, "ServiceUnavailable", kind=RefusalKind.TEMPORARY),
    "lost@example.com": ConnectionLost("read timeout after the request was sent",
                                       maybe_delivered=True),
}  # fmt: skip


class FakeProvider:
    """An API transport at the interface: an id per accepted message, refusals by address."""

    where = "fake provider"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        refusal = REFUSALS.get(recipient)
        if refusal is not None:
            raise refusal
        self.sent.append(recipient)
        return Reply(200, "OK", provider_message_id=f"pid-{recipient}")


def _compose(claim: Claim) -> tuple[str, bytes]:
    return f"<{claim.id}@mailcast.test>", b"Subject: hi\r\n\r\nhello\r\n"


@pytest.mark.parametrize("window", ["batch", "ledger", "journal"])
def test_provider_ids_and_refusals_are_recorded_alike(
    db_url: str, window: str, tmp_path: Path
) -> None:
    ledger = Ledger(db_url)
    run_id = ledger.create_run("api", {"name": "api"}, dry_run=False, transport=None)
    addresses = [f"p{i}@example.com" for i in range(30)] + list(REFUSALS)
    ledger.plan(
        run_id, [Recipient(i + 2, a, {"email": a}, None, a) for i, a in enumerate(addresses)]
    )
    provider = FakeProvider()
    control = RunControl(retry_base=0.01, pause_after_failures=100)
    token = new_token() if window == "journal" else "t1"
    run_connection(
        ledger, provider, _compose, "s@example.com", run_id, *EVERY_ID,
        max_attempts=2, control=control, per_message=window == "ledger", token=token,
        journal_dir=tmp_path / "journal" if window == "journal" else None,
    )  # fmt: skip
    ledger.release(token)
    rows: dict[str, dict[str, Any]] = {r["address"]: r for r in ledger.deliveries(run_id)}

    for a in addresses[:30]:
        row = rows[a]
        assert (row["status"], row["provider_message_id"]) == ("sent", f"pid-{a}")
        assert (row["smtp_code"], row["smtp_reply"]) == (None, "OK")
    assert sorted(provider.sent) == sorted(addresses[:30])  # each once

    rejected = rows["rejected@example.com"]
    assert rejected["status"] == FAILED
    assert rejected["reason"] == "rejected: 400 MessageRejected: Email address is not verified."
    assert (rejected["smtp_code"], rejected["provider_message_id"]) == (None, None)
    assert rejected["smtp_reply"] == "400 MessageRejected: Email address is not verified."
    down = rows["down@example.com"]
    assert down["status"] == FAILED
    assert down["reason"] == "temporary failure after 2 attempts: 503 ServiceUnavailable"
    assert down["smtp_code"] is None
    lost = rows["lost@example.com"]
    assert lost["status"] == "unknown"
    assert lost["reason"].startswith("may have been delivered")

    summary = summarize_run(ledger, run_id)
    assert ("failed", "rejected: 400 MessageRejected: Email address is not verified.", 1) in (
        summary.reasons
    )
    # retry --failed: the provider's temporary failure only, not its rejection
    assert ledger.reopen(run_id, [FAILED], retryable_only=True) == 1
    assert ledger.counts(run_id)["pending"] == 1
