"""Taking a run's rows the way the engine and the flow do: the Chunker's (first id, last id)
chunks of the pending ids, and ``pending_ids`` then ``claim_ids`` within one."""

from __future__ import annotations

from mailcast.engine.chunking import Chunker
from mailcast.ledger.store import Claim, Ledger

EVERY_ID = (0, 2**62)


def chunk_ranges(ledger: Ledger, run_id: str, size: int) -> list[tuple[int, int]]:
    """The run's pending rows as inclusive id ranges of ``size`` rows (the last one smaller)."""
    chunker = Chunker(
        ledger.all_pending_ids(run_id), per_connection=size, connections=1, guided=False
    )
    ranges = []
    while (bounds := chunker.take(1)) is not None:
        ranges.append(bounds)
    return ranges


def claim_pending(
    ledger: Ledger, run_id: str, limit: int, lo: int = EVERY_ID[0], hi: int = EVERY_ID[1]
) -> list[Claim]:
    """Take up to ``limit`` of the run's pending rows with ids in [lo, hi] (marked sending)."""
    return ledger.claim_ids(run_id, ledger.pending_ids(run_id, lo, hi)[:limit])
