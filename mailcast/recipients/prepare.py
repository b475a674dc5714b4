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
from typing import Any

from mailcast.engagement.suppression import suppressed_for
from mailcast.errors import RepeatError, SourceError
from mailcast.ledger import campaign_audience
from mailcast.ledger.models import RunStatus, utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients.dedupe import dedupe_rows
from mailcast.recipients.model import Recipient, RecipientTable, gc_paused
from mailcast.recipients.sources import open_recipients
from mailcast.recipients.validate import reason_category, validate_rows
from mailcast.settings import Settings
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
    spec: CampaignSpec,
    *,
    suppressed: Collection[str] = frozenset(),
    database_url: str | None = None,
    run_id: str | None = None,
) -> Iterator[CheckedRows]:
    """Open the campaign's recipient data and check its rows as they are read: read → validate
    (``required_columns``, ``check_deliverability``, not in ``suppressed``) → dedupe → with
    ``once_per_contact``, not already sent the campaign's ``key``. The header and the required
    columns are checked on entering; leaving closes the source. A recipient file must be inside
    the campaign folder (``CampaignSpec.campaign_file``). ``database_url``: the ledger (lists,
    segments and the keys sent live there; default: the settings')."""
    source = spec.recipients
    if source.path is not None:  # inside the campaign folder, itself inside a campaign root
        spec.campaign_file(source.path, field="recipients.path", error=SourceError)
    url = database_url or Settings().ledger_url()
    with open_recipients(source, spec.base_dir, url) as stream:
        rows = validate_rows(
            stream,
            stream.columns,
            required=source.required_columns,
            suppressed=suppressed,
            check_deliverability=spec.check_deliverability,
        )
        rows = dedupe_rows(rows)
        if spec.once_per_contact and spec.key:
            sent = campaign_audience.already_sent(Ledger(url).engine, spec.key, exclude_run=run_id)
            rows = _not_sent_before(rows, sent, spec.key)
        yield CheckedRows(stream.source, stream.columns, rows)


def _not_sent_before(rows: Iterable[Recipient], sent: set[str], key: str) -> Iterator[Recipient]:
    reason = f"already sent: {key}"
    for r in rows:
        if r.reason is None and r.key in sent:
            r.reason = reason
        yield r


def earlier_runs(database_url: str, spec: CampaignSpec, *, run_id: str | None = None) -> list[Any]:
    """Completed real runs of this campaign to the same recipients source (newest first); none
    when repeats are harmless: ``allow_repeats``, or ``once_per_contact`` (a key is never sent
    twice to an address)."""
    if spec.allow_repeats or spec.once_per_contact:
        return []
    engine = Ledger(database_url).engine
    recorded = spec.model_dump(mode="json")  # as a run records it
    return campaign_audience.completed_runs_to(engine, spec.name, recorded, exclude=run_id)


def check_repeat(
    database_url: str, spec: CampaignSpec, *, confirmed: bool, run_id: str | None = None
) -> None:
    """RepeatError when this campaign was already sent to the same recipients source (a
    completed real run) and the repeat is neither allowed by the spec nor ``confirmed``."""
    if confirmed:
        return
    earlier = earlier_runs(database_url, spec, run_id=run_id)
    if earlier:
        last = earlier[0]
        raise RepeatError(
            f"already sent to this audience: run {last.id} of {last.created_at:%Y-%m-%d %H:%M}"
            + (f" (and {len(earlier) - 1} more)" if len(earlier) > 1 else ""),
            where=f"campaign {spec.name!r}",
        )


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
    with checked_recipients(
        spec, suppressed=suppressed, database_url=database_url, run_id=run_id
    ) as checked:
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
