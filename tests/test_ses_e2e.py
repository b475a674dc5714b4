"""A 1,000-recipient campaign through Amazon SES (moto's server mode on loopback, behind the
fault-injecting proxy), by the send-campaign flow with a saved SES block (issue 14, acceptance
1): throttling, 5xx, a rejected message, answers that never came, then refused credentials on
a second run. Every row ends final (or unknown where SES may have the message), no message is
sent twice, and each accepted row carries SES's message id."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import pytest

from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign
from tests.ses_server import REGION, FaultProxy, moto_ses, sent_messages, upstream

N = 1_000


@pytest.mark.slow  # ~30 s on a loaded 2-core machine (moto's server: ~7 ms of CPU a message)
def test_a_campaign_through_ses_with_faults(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.blocks import AmazonSes
    from mailcast.flows.campaign import send_campaign
    from pydantic import SecretStr

    from mailcast.errors import AuthError
    from mailcast.spec import load_spec

    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
    rows = people(N)
    spec = load_spec(
        write_campaign(
            tmp_path / "c", rows, attachments=False,
            spec_extra={"connections": 8, "retry_base_seconds": 0.05, "chunk_size": 500},
        )
    )  # fmt: skip
    address = [r["email"] for r in rows]
    throttled, unavailable = address[10:30], address[40:50]
    rejected, lost = address[100:105], address[200:203]
    with moto_ses() as moto, FaultProxy(upstream(moto), timeout_delay=6.0) as proxy:
        for a in throttled:
            proxy.fault(a, "throttle")
        for a in unavailable:
            proxy.fault(a, "unavailable", "unavailable")  # twice: sent on the third attempt
        for a in rejected:
            proxy.fault(a, "reject")
        for a in lost:
            proxy.fault(a, "timeout")
        name = f"ses-{uuid.uuid4().hex[:8]}"
        AmazonSes(
            region=REGION, access_key_id="AKIATEST", secret_access_key=SecretStr("test-secret"),
            endpoint_url=proxy.url, timeout=3.0,
        ).save(name)  # fmt: skip

        summary = send_campaign(spec=spec, dry_run=False, transport_block=name)
        stored = sent_messages()

        # refused credentials: the run stops, nobody is marked failed
        proxy.bad_credentials = True
        second = write_campaign(tmp_path / "d", people(5), attachments=False, name="second")
        state = send_campaign(
            spec=load_spec(second), dry_run=False, transport_block=f"ses/{name}",
            return_state=True,
        )  # fmt: skip

    ledger = Ledger(db)
    first_run = summary.run_id
    counts = ledger.counts(first_run)
    assert counts["sent"] == N - len(rejected) - len(lost)
    assert (counts["failed"], counts["unknown"]) == (len(rejected), len(lost))
    assert counts["pending"] == counts["sending"] == 0
    by_address = {r["address"]: r for r in ledger.deliveries(first_run)}

    # no message twice: SES holds one per sent or unknown row, none for a rejected one
    copies = Counter(m.destinations[0] for m in stored)
    assert max(copies.values()) == 1 and sum(copies.values()) == N - len(rejected)
    assert not set(rejected) & set(copies) and set(lost) <= set(copies)
    ids = {m.destinations[0]: m.id for m in stored}
    for a, row in by_address.items():
        if row["status"] == "sent":
            assert row["provider_message_id"] == ids[a] and row["smtp_code"] is None
    for a in throttled + unavailable:
        assert by_address[a]["status"] == "sent" and proxy.requests[a] >= 2
    assert by_address[rejected[0]]["reason"] == (
        "rejected: 400 MessageRejected: Email address is not verified."
    )
    assert by_address[lost[0]]["reason"].startswith("may have been delivered")
    assert "sent over Amazon SES" in summary.markdown()
    assert f"ses block {name}" in summary.markdown()

    assert state.is_failed()
    assert "SES refused the credentials" in (state.message or "")
    second_run = next(r for r in ledger.runs() if r.campaign == "second")
    assert ledger.counts(second_run.id)["failed"] == 0
    assert ledger.counts(second_run.id)["pending"] == 5
    with pytest.raises(AuthError):
        state.result()
