"""Export a run's per-recipient ledger (CSV, JSON, XLSX, Parquet), streamed in batches."""

from __future__ import annotations

from pathlib import Path

from mailcast.export import export_run
from mailcast.ledger.store import Ledger
from tasks._prefect import task


def export_report(database_url: str, run_id: str, fmt: str, out: str | None) -> tuple[str, int]:
    ledger = Ledger(database_url)
    run = ledger.run(run_id)
    path = Path(out) if out else Path(f"mailcast-{run.id}.{fmt}")
    return str(path), export_run(ledger, run.id, path, fmt)


@task(name="export-report")
def export_task(database_url: str, run_id: str, fmt: str, out: str | None) -> tuple[str, int]:
    return export_report(database_url, run_id, fmt, out)
