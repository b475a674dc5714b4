"""Resume a run: rows left in flight by a crash become ``unknown`` (reported; re-sent only on
request, like rows whose reply to the message never came), and the run picks up exactly the rows
that are not final. The senders' hand-over journals on this machine (engine/journal.py) say
which rows of a crashed connection were accepted (``sent``), which one was on the wire
(``unknown``) and which were only reserved (sent now). ``retry_failed`` also reopens the failures worth another try: temporary ones
and the sender's own refusals (``Ledger.reopen``'s ``retryable_only``)."""

from __future__ import annotations

from mailcast.engine.journal import read_journals, remove_run
from mailcast.errors import RunNotFoundError
from mailcast.ledger.models import FAILED, UNKNOWN, RunStatus, utcnow
from mailcast.ledger.store import Ledger
from mailcast.settings import Settings


def reopen_run(
    ledger: Ledger, run_id: str, *, resend_unknown: bool = False, retry_failed: bool = False
) -> dict[str, int]:
    run_id = ledger.run(run_id).id
    folder = Settings().journals()
    found = read_journals(folder, run_id)
    journals = {t: (j.accepted, j.in_doubt) for t, j in found.items() if j.trusted and not j.live}
    busy = {t for t, j in found.items() if j.live}  # a sender still at work here: its rows
    changed = {"unknown": ledger.mark_unknown(run_id, journals, busy=busy), "reopened": 0}
    remove_run(folder, run_id, [p for t, j in found.items() if t not in busy for p in j.files])
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
