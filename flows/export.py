"""The export flow: an operator exports a run's ledger from the Prefect UI (deployment
``export-run``); the same export as ``mailcast report``."""

from __future__ import annotations

from typing import Literal

from mailcast.tasks.report import export_task
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mailcast.settings import Settings


@flow(name="export-run", log_prints=True)
def export_run(
    run_id: str,
    format: Literal["csv", "json", "xlsx", "parquet"] = "csv",
    out: str | None = None,
) -> str:
    """Write run ``run_id``'s per-recipient ledger to ``out`` (default: mailcast-RUN.FORMAT).
    The ledger is the worker's (MAILCAST_DATABASE_URL): a database URL with its password is
    never a flow parameter."""
    database_url = Settings().ledger_url()
    path, rows = export_task(database_url, run_id, format, out)
    create_markdown_artifact(
        markdown=f"Exported **{rows}** delivery rows of run `{run_id}` to `{path}` ({format}).",
        key="run-export",
    )
    print(f"wrote {rows} rows to {path}")
    return path
