"""The ``export-report`` task: a run's per-recipient ledger as CSV, JSON, XLSX or Parquet."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.export import export_report


@task(name="export-report")
def export_task(database_url: str, run_id: str, fmt: str, out: str | None) -> tuple[str, int]:
    return export_report(database_url, run_id, fmt, out)
