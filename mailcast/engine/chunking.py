"""Chunking: the planned rows of a run handed out as chunks to the send tasks, each sized for
the connections of the task that will send it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mailcast.ledger.store import Ledger

MAX_CHUNKS = 1_000  # chunk tasks per run, at most (Prefect records ~15-20 task runs a second)
# In a chunk sent over several connections, at least this many rows each: a chunk task costs
# ~0.1-0.2 s of CPU in Prefect (settings, task run, events) besides new connections.
ROWS_PER_CONNECTION = 2_000
TAIL_ROWS_PER_CONNECTION = 50  # the smallest chunks, at the end of a run (per connection)


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
        ids = ledger.all_pending_ids(run_id)
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
