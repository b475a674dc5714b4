"""Resume a run: rows left in flight by a crash become ``unknown`` (reported; re-sent only on
request, like rows whose reply to the message never came), and the run picks up exactly the rows
that are not final. ``retry_failed`` also reopens the failures worth another try: temporary ones
and the sender's own refusals (``Ledger.reopen``'s ``retryable_only``)."""

from __future__ import annotations

from mailcast.errors import RunNotFoundError
from mailcast.ledger.models import FAILED, UNKNOWN, RunStatus, utcnow
from mailcast.ledger.store import Ledger


def reopen_run(
    ledger: Ledger, run_id: str, *, resend_unknown: bool = False, retry_failed: bool = False
) -> dict[str, int]:
    run_id = ledger.run(run_id).id
    changed = {"unknown": ledger.mark_unknown(run_id), "reopened": 0}
    if resend_unknown:
        changed["reopened"] += ledger.reopen(run_id, [UNKNOWN])
    if retry_failed:
        changed["reopened"] += ledger.reopen(run_id, [FAILED], retryable_only=True)
    ledger.set_run(run_id, status=RunStatus.SENDING, finished_at=None, started_at=utcnow())
    return changed


def run_planned(ledger: Ledger, run_id: str) -> bool:
    """Has this run been planned already (its rows written)?"""
    try:
        return ledger.run(run_id).status != RunStatus.PLANNING
    except RunNotFoundError:
        return False
