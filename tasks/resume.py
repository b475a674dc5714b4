"""Resume a run: rows left in flight by a crash become ``unknown`` (reported; re-sent only on
request), and the run picks up exactly the rows that are not final."""

from __future__ import annotations

from mailcast.errors import RunNotFoundError
from mailcast.ledger.models import FAILED, UNKNOWN, utcnow
from mailcast.ledger.store import Ledger
from tasks._prefect import task


def reopen_run(
    ledger: Ledger, run_id: str, *, resend_unknown: bool = False, retry_failed: bool = False
) -> dict[str, int]:
    run_id = ledger.run(run_id).id
    changed = {"unknown": ledger.mark_unknown(run_id), "reopened": 0}
    if resend_unknown:
        changed["reopened"] += ledger.reopen(run_id, [UNKNOWN])
    if retry_failed:
        changed["reopened"] += ledger.reopen(run_id, [FAILED], temporary_only=True)
    ledger.set_run(run_id, status="sending", finished_at=None, started_at=utcnow())
    return changed


@task(name="reopen-run")
def reopen_task(
    database_url: str, run_id: str, resend_unknown: bool = False, retry_failed: bool = False
) -> dict[str, int]:
    return reopen_run(
        Ledger(database_url), run_id, resend_unknown=resend_unknown, retry_failed=retry_failed
    )


def run_planned(ledger: Ledger, run_id: str) -> bool:
    """Has this run been planned already (its rows written)?"""
    try:
        return ledger.run(run_id).status != "planning"
    except RunNotFoundError:
        return False


@task(name="run-planned")
def run_planned_task(database_url: str, run_id: str) -> bool:
    return run_planned(Ledger(database_url), run_id)
