"""Plan a run: open its ledger record and write one row per recipient (pending, or skipped with
the reason), so every recipient has a recorded status before the first message leaves.

``prepare_run`` is the campaign flow's whole way from the recipient data to the ledger, in one
pass over the data: ingest → validate → dedupe → plan, each a generator step over the rows
(``open_recipients``, ``validate_rows``, ``dedupe_rows``, ``Ledger.plan``), so only the row at
hand is in memory, plus dedupe's set of addresses seen. A million rows take well under 1 GB.

``Chunker`` hands out the planned rows as chunks to the send tasks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from mailcast.ledger.models import PENDING, utcnow
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient, RecipientTable
from mailcast.spec import CampaignSpec
from mailcast.transport.target import Target
from tasks._prefect import task

MAX_CHUNKS = 1_000  # chunk tasks per run, at most (Prefect records ~15-20 task runs a second)
# In a chunk sent over several connections, at least this many rows each: a chunk task costs
# ~0.1-0.2 s of CPU in Prefect (settings, task run, events) besides new connections.
ROWS_PER_CONNECTION = 2_000
TAIL_ROWS_PER_CONNECTION = 50  # the smallest chunks, at the end of a run (per connection)


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
    ledger.set_run(run_id, status="sending", flow_run_id=flow_run_id, started_at=utcnow())
    return run_id


def plan_run(
    ledger: Ledger,
    spec: CampaignSpec,
    table: RecipientTable,
    target: Target,
    *,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> str:
    """``plan_rows`` for a table in memory."""
    return plan_rows(
        ledger, spec, table.rows, table.columns, target, run_id=run_id, flow_run_id=flow_run_id
    )


def prepare_run(
    database_url: str,
    spec: CampaignSpec,
    target: Target,
    *,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> Planned:
    """Ingest, validate, dedupe and plan in one streaming pass over the recipient data."""
    from tasks.dedupe import dedupe_rows
    from tasks.ingest import open_recipients
    from tasks.tracking import suppression_list
    from tasks.validate import reason_category, validate_rows

    ledger = Ledger(database_url)
    suppressed = suppression_list(database_url)  # the ledger's: every campaign skips them
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


@task(name="prepare", retries=0, persist_result=False)
def prepare_task(database_url: str, spec: CampaignSpec, target: Target, run_id: str) -> Planned:
    """Read the recipients, validate, dedupe and write them to the ledger, streaming."""
    from prefect.runtime import flow_run

    return prepare_run(database_url, spec, target, run_id=run_id, flow_run_id=flow_run.get_id())


def full_chunk_rows(pending: int, chunk_size: int, threads: int) -> int:
    """The rows of a full chunk: the spec's ``chunk_size``, but at least ``ROWS_PER_CONNECTION``
    per connection of a chunk sent over several (a chunk costs a Prefect task run, a
    concurrency-limit lease and new connections), and large enough that a run has at most
    ``MAX_CHUNKS`` chunks."""
    size = max(chunk_size, math.ceil(pending / MAX_CHUNKS))
    if threads > 1:
        size = max(size, threads * ROWS_PER_CONNECTION)
    return size


class Chunker:
    """Hands out the run's pending rows as chunks, (first id, last id) inclusive ranges in id
    order, each sized for the connections of the task that will send it.

    ``per_connection`` rows per connection while plenty remain. With ``guided`` (chunks sent
    over several connections), less as the run nears its end: half of what is left spread
    over all ``connections``, down to ``TAIL_ROWS_PER_CONNECTION`` (or an even share of a
    small run), so the task slots finish together instead of one sending the last big chunk
    alone, and a small run still keeps every connection busy from the start."""

    def __init__(
        self, ids: Sequence[int], *, per_connection: int, connections: int, guided: bool
    ) -> None:
        self._ids = ids
        self._next = 0
        self.per_connection = max(1, per_connection)
        self.connections = max(1, connections)
        self.guided = guided
        self.chunks = 0

    @classmethod
    def for_run(
        cls, ledger: Ledger, run_id: str, *, chunk_size: int, threads: int, connections: int
    ) -> Chunker:
        """The run's pending rows; full chunks of ``chunk_size`` (see the function) rows for
        tasks of ``threads`` connections, ``connections`` in all."""
        from array import array

        from sqlalchemy import select

        from mailcast.ledger.store import D

        query = select(D.c.id).where(D.c.run_id == run_id, D.c.status == PENDING).order_by(D.c.id)
        ids = array("q")
        with ledger.engine.connect() as conn:
            for batch in (
                conn.execution_options(yield_per=50_000).execute(query).scalars().partitions()
            ):
                ids.extend(batch)
        full = full_chunk_rows(len(ids), chunk_size, threads)
        return cls(
            ids,
            per_connection=math.ceil(full / threads),
            connections=connections,
            guided=threads > 1,
        )

    @property
    def left(self) -> int:
        return len(self._ids) - self._next

    def take(self, threads: int) -> tuple[int, int] | None:
        """The next chunk, for a task of ``threads`` connections; None when all are out."""
        left = self.left
        if left <= 0:
            return None
        per = self.per_connection
        if self.guided:
            smallest = min(TAIL_ROWS_PER_CONNECTION, math.ceil(len(self._ids) / self.connections))
            per = min(per, max(smallest, math.ceil(left / (2 * self.connections))))
        rows = min(left, per * max(1, threads))
        first = self._ids[self._next]
        self._next += rows
        self.chunks += 1
        return first, self._ids[self._next - 1]

    def clear(self) -> None:
        """Hand out nothing more."""
        self._next = len(self._ids)
