"""Group commit for the engine loops of one chunk: their ledger round trips, shared.

Each engine loop (one SMTP connection, one thread) talks to the ledger once per message (the
hand-over of the message it is about to send, with the outcomes not yet recorded) and once per
batch (the claim of its next rows). With many connections that is many small transactions,
each waiting for a pooled database connection and for the GIL between its round trips
(measured at 200 connections to a slow server: a median of ~70 ms per claim).

A :class:`ClaimGroup` wraps the store for the loops of one chunk: an exchange waits while one
transaction is in flight, then every exchange that arrived meanwhile goes in the next
transaction together (all their outcomes recorded, all their ids claimed and handed over),
and each caller gets back its own part. So the number of transactions follows the database's
speed, not the number of connections, and nothing changes for the ledger's guarantees: a
loop's outcomes are committed with (or before) its next hand-over or claim, rows are handed
over before their messages are sent, and a failed transaction fails every exchange in it (each
caller may then try its own again). The loops of a chunk share one claim token.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailcast.ledger.store import Claim, Exchanged, Outcome, Store


@dataclass
class _Request:
    claim: Sequence[int]
    hand_over: Sequence[int]
    record: Sequence[Outcome]
    wake: threading.Event = field(default_factory=threading.Event)  # answered, or to lead
    done: bool = False
    lead: bool = False
    result: Exchanged = field(default_factory=Exchanged)
    error: BaseException | None = None


class ClaimGroup:
    """``store`` with ``exchange`` grouped across threads (see the module); the rest of the
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

    def record(self, outcomes: Sequence[Outcome], *, token: str | None = None) -> None:
        self.store.record(outcomes, token=token)

    def claim_ids(
        self,
        run_id: str,
        ids: Sequence[int],
        *,
        record: Sequence[Outcome] = (),
        token: str | None = None,
    ) -> list[Claim]:
        return self.exchange(run_id, token=token, record=record, claim=ids).claims

    def exchange(
        self,
        run_id: str,
        *,
        token: str | None,
        record: Sequence[Outcome] = (),
        claim: Sequence[int] = (),
        hand_over: Sequence[int] = (),
    ) -> Exchanged:
        if not (claim or hand_over or record):
            return Exchanged()
        mine = _Request(claim, hand_over, record)
        with self._lock:
            self._waiting.append(mine)
            if not self._busy:
                self._busy = mine.lead = True
        if not mine.lead:
            mine.wake.wait()
        if not mine.done:  # leading: one transaction for everyone waiting (us included)
            with self._lock:
                group, self._waiting = self._waiting, []
            self._run(run_id, token, group)
            with self._lock:
                if self._waiting:  # arrived meanwhile: the first of them leads the next one
                    nxt = self._waiting[0]
                    nxt.lead = True
                    nxt.wake.set()
                else:
                    self._busy = False
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _run(self, run_id: str, token: str | None, group: list[_Request]) -> None:
        error: BaseException | None = None
        done = Exchanged()
        try:
            done = self.store.exchange(
                run_id,
                token=token,
                record=[o for r in group for o in r.record],
                claim=[i for r in group for i in r.claim],
                hand_over=[i for r in group for i in r.hand_over],
            )
        except BaseException as exc:  # every exchange of the transaction fails with it
            error = exc
        self.transactions += 1
        by_id = {c.id: c for c in done.claims}
        for r in group:
            r.result = Exchanged(
                claims=[by_id[i] for i in sorted(r.claim) if i in by_id],
                handed={i for i in r.hand_over if i in done.handed},
            )
            r.error = error
            r.done = True
            r.wake.set()
