"""Resuming a run: is it planned already, and reopen its rows."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.engine.resume import reopen_run, run_planned
from mailcast.ledger.store import Ledger


@task(name="reopen-run")
def reopen_task(
    database_url: str, run_id: str, resend_unknown: bool = False, retry_failed: bool = False
) -> dict[str, int]:
    return reopen_run(
        Ledger(database_url), run_id, resend_unknown=resend_unknown, retry_failed=retry_failed
    )


@task(name="run-planned")
def run_planned_task(database_url: str, run_id: str) -> bool:
    return run_planned(Ledger(database_url), run_id)
