"""process-bounces on an install without a bounce mailbox (the deployment's 15-minute schedule is
active from the start): the run completes and says what to set, instead of failing with a
traceback every 15 minutes. A mailbox that is configured but unreadable still fails the run.
tests/test_deployment_e2e.py runs the deployment itself on a real server and worker."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_no_mailbox_configured_completes_with_a_note() -> None:
    from mailcast.flows.bounces import process_bounces
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    state = process_bounces(return_state=True)
    assert state.is_completed(), state
    assert state.message is not None
    assert "no bounce mailbox configured" in state.message
    assert "MAILCAST_BOUNCE_MAILDIR" in state.message
    summary = state.result()
    assert (summary.mailbox, summary.read, summary.recorded) == ("(not configured)", 0, 0)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    [note] = [a for a in artifacts if a.key == "bounce-mailbox"]
    assert note.type == "markdown"
    for setting in ("MAILCAST_BOUNCE_MAILDIR", "MAILCAST_BOUNCE_IMAP_URL"):
        assert setting in str(note.data)


def test_a_configured_mailbox_that_cannot_be_read_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.bounces import process_bounces

    monkeypatch.setenv("MAILCAST_BOUNCE_MAILDIR", str(tmp_path / "no-such-maildir"))
    state = process_bounces(return_state=True)
    assert state.is_failed(), state
