"""The ``prepare`` task: ingest → validate → dedupe → plan, streamed into the ledger."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.recipients.prepare import Planned, prepare_run
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import Target


@task(name="prepare", retries=0, persist_result=False)
def prepare_task(database_url: str, spec: CampaignSpec, target: Target, run_id: str) -> Planned:
    """Read the recipients, validate, dedupe and write them to the ledger, streaming."""
    from prefect.runtime import flow_run

    return prepare_run(database_url, spec, target, run_id=run_id, flow_run_id=flow_run.get_id())
