"""The one prepare pipeline, and planning a run with it.

``checked_recipients`` is the way from the recipient data to checked rows: read → validate →
dedupe, each a generator step over the rows (``open_recipients``, ``validate_rows``,
``dedupe_rows``), so only the row at hand is in memory, plus dedupe's set of addresses seen. The
CLI's ``validate`` and ``preview`` collect its rows into a table to show them; the campaign flow's
``prepare_run`` streams them into the ledger (``Ledger.plan``): one row per recipient (pending, or
skipped with the reason), so every recipient has a recorded status before the first message
leaves. A million rows take well under 1 GB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mailcast.engagement.suppression import suppressed_for
from mailcast.errors import SourceError
from mailcast.ledger.models import RunStatus, utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients.dedupe import dedupe_rows
from mailcast.recipients.model import Recipient, RecipientTable, gc_paused
from mailcast.recipients.sources import open_recipients
from mailcast.recipients.validate import reason_category, validate_rows
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import Target


@dataclass
class CheckedRows:
    """The recipient data's ``columns`` (its checked header) and its ``rows``, each validated and
    deduplicated as it is read (a row the checks reject carries its ``reason``)."""

    source: str
    columns: list[str]
    rows: Iterator[Recipient]

    def __iter__(self) -> Iterator[Recipient]:
        return self.rows

    def table(self) -> RecipientTable:
        """Every remaining row, in memory (for showing them)."""
        with gc_paused():
            return RecipientTable(source=self.source, columns=self.columns, rows=list(self.rows))


@contextlib.contextmanager
def checked_recipients(
    spec: CampaignSpec, *, suppressed: Collection[str] = frozenset()
) -> Iterator[CheckedRows]:
    """Open the campaign's recipient data and check its rows as they are read: read → validate
    (``required_columns``, ``check_deliverability``, not in ``suppressed``) → dedupe. The header
    and the required columns are checked on entering; leaving closes the source. A recipient
    file must be inside the campaign folder (``CampaignSpec.campaign_file``)."""
    source = spec.recipients
    if source.path is not None:  # inside the campaign folder, itself inside a campaign root
        spec.campaign_file(source.path, field="recipients.path", error=SourceError)
    with open_recipients(source, spec.base_dir) as stream:
        rows = validate_rows(
            stream,
            stream.columns,
            required=source.required_columns,
            suppressed=suppressed,
            check_deliverability=spec.check_deliverability,
        )
        yield CheckedRows(stream.source, stream.columns, dedupe_rows(rows))


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
        transport=target.record(),  # password-free: resume and retry reach the same server
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
    """Read, check and plan in one streaming pass over the recipient data (``checked_recipients``
    into ``plan_rows``). Addresses on the ledger's suppression list are skipped."""
    ledger = Ledger(database_url)
    suppressed = suppressed_for(database_url)  # the ledger's: every campaign skips them
    with checked_recipients(spec, suppressed=suppressed) as checked:
        planned = Planned(run_id or "")
        rows = _tally(checked.rows, planned)
        planned.run_id = plan_rows(
            ledger, spec, rows, checked.columns, target, run_id=run_id, flow_run_id=flow_run_id
        )
    return planned


def _tally(rows: Iterable[Recipient], planned: Planned) -> Iterator[Recipient]:
    outcomes = planned.outcomes
    for r in rows:
        planned.rows += 1
        kind = "ok" if r.reason is None else reason_category(r.reason)
        outcomes[kind] = outcomes.get(kind, 0) + 1
        yield r
