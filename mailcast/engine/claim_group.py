"""Group commit for the engine loops of one chunk: their ledger round trips, shared.

Each engine loop (one SMTP connection, one thread) writes its last batch's outcomes and claims
its next rows in one transaction (``Store.claim_ids(..., record=...)``). With many connections
to a slow server that is one transaction per message per connection: at 200 connections and
0.5 s a message, 400 small transactions a second, each waiting for a pooled database connection
and for the GIL between its round trips (measured: a median of ~70 ms per claim, more than a
tenth of each message's time).

A :class:`ClaimGroup` wraps the store for the loops of one chunk: a claim waits while one
transaction is in flight, then every claim that arrived meanwhile goes in the next transaction
together (all their outcomes recorded, all their ids claimed), and each caller gets back the
rows of its own ids. So the number of transactions follows the database's speed, not the
number of connections, and nothing changes for the ledger's guarantees: a loop's outcomes are
still committed with (or before) its next claim, rows are claimed before anything of their
messages is sent, and a failed transaction fails every claim that was in it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailcast.ledger.store import Claim, Outcome, Store


@dataclass
class _Request:
    ids: Sequence[int]
    record: Sequence[Outcome]
    wake: threading.Event = field(default_factory=threading.Event)  # answered, or to lead
    done: bool = False
    lead: bool = False
    claims: list[Claim] = field(default_factory=list)
    error: BaseException | None = None


class ClaimGroup:
    """``store`` with ``claim_ids`` grouped across threads (see the module); the rest of the
    ``Store`` interface goes to ``store`` as it is. No extra thread: the caller that finds no
    transaction in flight runs one for everyone waiting, then wakes the first caller that
    arrived meanwhile to run the next."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._busy = False
        self.transactions = 0  # how many the group ran (for tests and logs)

    def pending_ids(self, run_id: str, lo: int, hi: int) -> list[int]:
        return self.store.pending_ids(run_id, lo, hi)

    def record(self, outcomes: Sequence[Outcome]) -> None:
        self.store.record(outcomes)

    def claim_ids(
        self, run_id: str, ids: Sequence[int], *, record: Sequence[Outcome] = ()
    ) -> list[Claim]:
        if not ids and not record:
            return []
        mine = _Request(ids, record)
        with self._lock:
            self._waiting.append(mine)
            if not self._busy:
                self._busy = mine.lead = True
        if not mine.lead:
            mine.wake.wait()
        if not mine.done:  # leading: one transaction for everyone waiting (us included)
            with self._lock:
                group, self._waiting = self._waiting, []
            self._run(run_id, group)
            with self._lock:
                if self._waiting:  # arrived meanwhile: the first of them leads the next one
                    nxt = self._waiting[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._busy = False
        if mine.error is not None:
            raise mine.error
        return mine.claims

    def _run(self, run_id: str, group: list[_Request]) -> None:
        ids = [i for r in group for i in r.ids]
        record = [o for r in group for o in r.record]
        claims: list[Claim] = []
        error: BaseException | None = None
        try:
            claims = self.store.claim_ids(run_id, ids, record=record)
        except BaseException as exc:  # every claim of the transaction fails with it
            error = exc
        self.transactions += 1
        by_id = {c.id: c for c in claims}
        for r in group:
            r.claims = [by_id[i] for i in sorted(r.ids) if i in by_id]
            r.error = error
            r.done = True
            r.wake.set()
