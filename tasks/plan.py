"""Plan a run: open its ledger record and write one row per recipient (pending, or skipped with
the reason), so every recipient has a recorded status before the first message leaves."""

from __future__ import annotations

from mailcast.ledger.models import utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients import RecipientTable
from mailcast.spec import CampaignSpec
from mailcast.transport.target import Target
from tasks._prefect import task


def plan_run(
    ledger: Ledger,
    spec: CampaignSpec,
    table: RecipientTable,
    target: Target,
    *,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> str:
    run_id = ledger.create_run(
        spec.name,
        spec.model_dump(mode="json"),
        dry_run=target.dry_run,
        transport=target.describe(),
        run_id=run_id,
    )
    ledger.plan(run_id, table.rows, table.columns)
    ledger.set_run(run_id, status="sending", flow_run_id=flow_run_id, started_at=utcnow())
    return run_id


@task(name="plan")
def plan_task(
    database_url: str,
    spec: CampaignSpec,
    table: RecipientTable,
    target: Target,
    run_id: str | None = None,
) -> str:
    from prefect.runtime import flow_run

    return plan_run(
        Ledger(database_url), spec, table, target, run_id=run_id, flow_run_id=flow_run.get_id()
    )
