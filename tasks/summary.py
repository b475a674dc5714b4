"""The ``summary`` task: finish the run in the ledger and publish its summary as artifacts."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.engine.summary import RunSummary, finish_run
from mailcast.ledger.store import Ledger


@task(name="summary")
def summary_task(database_url: str, run_id: str) -> RunSummary:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    summary = finish_run(Ledger(database_url), run_id)
    create_markdown_artifact(
        markdown=summary.markdown(), key="run-summary", description=f"mailcast run {run_id}"
    )
    create_table_artifact(
        table=[{"status": s, "recipients": n} for s, n in summary.counts.items()],
        key="run-counts",
        description=f"recipients by status, run {run_id}",
    )
    return summary
