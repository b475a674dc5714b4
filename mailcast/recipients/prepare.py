"""Plan a run: open its ledger record and write one row per recipient (pending, or skipped with
the reason), so every recipient has a recorded status before the first message leaves.

``prepare_run`` is the campaign flow's whole way from the recipient data to the ledger, in one
pass over the data: ingest → validate → dedupe → plan, each a generator step over the rows
(``open_recipients``, ``validate_rows``, ``dedupe_rows``, ``Ledger.plan``), so only the row at
hand is in memory, plus dedupe's set of addresses seen. A million rows take well under 1 GB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mailcast.ledger.models import RunStatus, utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import Target


@dataclass
class Planned:
    """What ``prepare_run`` wrote: the run, how many rows, and how many per outcome."""

    run_id: str
    rows: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {"ok": 0})

    @property
    def to_send(self) -> int:
        return self.outcomes.get("ok", 0)


def plan_rows(
    ledger: Ledger,
    spec: CampaignSpec,
    rows: Iterable[Recipient],
    columns: Sequence[str],
    target: Target,
    *,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> str:
    """Open the run's record and write its rows (streamed: ``rows`` may be a generator). If
    reading the rows fails, the run's record is removed again: nothing was planned."""
    run_id = ledger.create_run(
        spec.name,
        spec.model_dump(mode="json"),
        dry_run=target.dry_run,
        transport=target.describe(),
        run_id=run_id,
    )
    try:
        ledger.plan(run_id, rows, columns)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the plan is what matters
            ledger.discard_run(run_id)
        raise
    ledger.set_run(run_id, status=RunStatus.SENDING, flow_run_id=flow_run_id, started_at=utcnow())
    return run_id


def prepare_run(
    database_url: str,
    spec: CampaignSpec,
    target: Target,
    *,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> Planned:
    """Ingest, validate, dedupe and plan in one streaming pass over the recipient data."""
    from mailcast.engagement.suppression import suppressed_for
    from mailcast.recipients.dedupe import dedupe_rows
    from mailcast.recipients.sources import open_recipients
    from mailcast.recipients.validate import reason_category, validate_rows

    ledger = Ledger(database_url)
    suppressed = suppressed_for(database_url)  # the ledger's: every campaign skips them
    source = spec.recipients
    with open_recipients(source, spec.base_dir) as stream:
        rows: Iterable[Recipient] = stream
        rows = validate_rows(
            rows,
            stream.columns,
            required=source.required_columns,
            suppressed=suppressed,
            check_deliverability=spec.check_deliverability,
        )
        rows = dedupe_rows(rows)
        planned = Planned(run_id or "")
        rows = _tally(rows, planned, reason_category)
        planned.run_id = plan_rows(
            ledger, spec, rows, stream.columns, target, run_id=run_id, flow_run_id=flow_run_id
        )
    return planned


def _tally(rows: Iterable[Recipient], planned: Planned, category: object) -> Iterator[Recipient]:
    outcomes = planned.outcomes
    for r in rows:
        planned.rows += 1
        kind = "ok" if r.reason is None else category(r.reason)  # type: ignore[operator]
        outcomes[kind] = outcomes.get(kind, 0) + 1
        yield r
