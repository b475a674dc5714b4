"""A 1,000-recipient campaign through the engine to a fake API, with faults, the transport
chosen through the registry by its URL (``sendgrid://?base_url=...``) and its key from the
environment: what every HTTP API transport's end-to-end test asserts (every row final, no
message twice, the provider's ids in ``deliveries.provider_message_id``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailcast.errors import AuthError
from mailcast.ledger.models import Delivery
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


def plan_run(folder: Path, url: str, n: int = N, **spec_extra: Any) -> Run:
    extra = {"connections": 4, "max_attempts": 5, "pause_after_failures": 0, **spec_extra}
    return plan(folder, None, n, url=url, **extra)  # type: ignore[arg-type]


def check_campaign_with_faults(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: Provider
) -> None:
    """1,000 recipients through the engine (4 connections) to the provider's fake with
    ``faults()``: every row final, no message twice, each acceptance's provider id kept."""
    provider.credentials(monkeypatch, good=True)
    with provider.fake(*faults(), hang=1.0) as fake:
        run = plan_run(folder, provider.url(fake.base_url) + "&timeout=0.5")
        run.send()
    rows = run.rows()
    statuses = {a: r["status"] for a, r in rows.items()}
    expected = dict.fromkeys(run.addresses, "sent") | {TIMED_OUT: "unknown", REJECTED: "failed"}
    assert statuses == expected
    assert rows[REJECTED]["reason"].startswith("rejected: 400 "), rows[REJECTED]["reason"]
    assert provider.rejected_words in rows[REJECTED]["reason"]
    assert "may have been delivered" in rows[TIMED_OUT]["reason"]
    # no message twice; the timed-out one reached the provider once (and is not sent again)
    assert fake.counts() == dict.fromkeys(set(run.addresses) - {REJECTED}, 1)
    assert fake.answered[429] + fake.answered[401] >= 6 and fake.answered[500] == 3
    # the provider's id of each accepted message, in the ledger
    given = {r.recipient: r.provider_id.strip("<>") for r in fake.received}
    stored = provider_ids_of(run.ledger, run.run_id)
    sent = [a for a, s in statuses.items() if s == "sent"]
    assert {a: stored[a] for a in sent} == {a: given[a] for a in sent}
    assert stored[TIMED_OUT] is None and stored[REJECTED] is None
    assert run.finish() == "completed"


def check_bad_credentials_stop_the_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: Provider
) -> None:
    """A wrong key stops the run at its first answer, nobody is marked failed; with the right
    key the run then finishes, every message once."""
    with provider.fake() as fake:
        provider.credentials(monkeypatch, good=False)
        run = plan_run(folder, provider.url(fake.base_url), 100)
        with pytest.raises(AuthError):
            run.send()
        assert {r["status"] for r in run.rows().values()} == {"pending"}
        assert fake.received == []
        provider.credentials(monkeypatch, good=True)
        run.send()
    assert {r["status"] for r in run.rows().values()} == {"sent"}
    assert fake.counts() == dict.fromkeys(run.addresses, 1)
    assert run.finish() == "completed"


def check_cli_send_then_resume(
    folder: Path, monkeypatch: pytest.MonkeyPatch, provider: Provider
) -> None:
    """Through the CLI and the flow, the transport chosen by its URL: a wrong key stops the run
    with one line and a hint, nobody failed; with the right key ``mailcast resume`` (which finds
    the transport in the run's record) sends every message once, each provider id stored."""
    from typer.testing import CliRunner

    from mailcast.cli import app
    from mailcast.ledger.store import Ledger
    from tests.campaigns import people, write_campaign

    runner = CliRunner()
    db = f"sqlite:///{folder / 'ledger.sqlite3'}"
    spec = write_campaign(folder, people(30), spec_extra={"connections": 2})
    with provider.fake() as fake:
        provider.credentials(monkeypatch, good=False)
        url = provider.url(fake.base_url)
        sent = runner.invoke(app, ["send", str(spec), "--send", "--transport", url, "--db", db])
        assert sent.exit_code == 2, sent.output
        assert "Traceback" not in sent.output
        assert "the API refused the credentials: 401" in sent.stderr
        ledger = Ledger(db)
        run_id = ledger.runs()[0].id
        assert ledger.run(run_id).status == "paused" and ledger.counts(run_id)["failed"] == 0
        provider.credentials(monkeypatch, good=True)
        again = runner.invoke(app, ["resume", run_id, "--db", db])
        assert again.exit_code == 0, again.output
    assert ledger.run(run_id).status == "completed"
    assert fake.counts() == {str(p["email"]): 1 for p in people(30)}
    given = {r.recipient: r.provider_id.strip("<>") for r in fake.received}
    assert {a: i for a, i in provider_ids_of(ledger, run_id).items()} == given


def provider_ids_of(ledger: Any, run_id: str) -> dict[str, str | None]:
    query = select(Delivery.address, Delivery.provider_message_id).where(Delivery.run_id == run_id)
    with ledger.engine.connect() as conn:
        return dict(conn.execute(query).tuples().all())
