"""Group commit for the connections of one chunk (mailcast/engine/claim_group.py), on SQLite and real
Postgres: many threads claiming and recording at once share transactions, and each still gets
exactly its own rows, with its outcomes in the ledger."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from mailcast.engine.claim_group import ClaimGroup
from mailcast.ledger.store import Claim, Exchanged, Ledger, Outcome
from tests.test_ledger import _run


def test_threads_get_their_own_rows_and_share_transactions(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 600)
    ids = ledger.pending_ids(run_id, 0, 10**9)
    group = ClaimGroup(ledger)
    got: dict[int, list[int]] = {}
    calls = 0
    lock = threading.Lock()
    start = threading.Barrier(20)

    def loop(k: int) -> None:
        nonlocal calls
        mine = ids[k::20]  # 30 rows each, claimed 3 at a time
        start.wait()
        previous: list[Outcome] = []
        taken: list[int] = []
        for i in range(0, len(mine), 3):
            claims = group.claim_ids(run_id, mine[i : i + 3], record=previous)
            taken += [c.id for c in claims]
            previous = [Outcome(c.id, "sent", smtp_code=250, smtp_reply="ok") for c in claims]
            with lock:
                calls += 1
        group.record(previous)
        got[k] = taken

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for k in range(20):
        assert got[k] == ids[k::20]  # each thread: exactly its own rows, in order
    assert ledger.counts(run_id)["sent"] == 600
    assert group.transactions < calls  # claims were grouped (200 calls)


def test_an_error_fails_every_claim_of_its_transaction() -> None:
    class Broken:
        def __init__(self) -> None:
            self.entered = threading.Event()
            self.release = threading.Event()
            self.calls = 0

        def exchange(
            self,
            run_id: str,
            *,
            token: str | None,
            record: Sequence[Outcome] = (),
            claim: Sequence[int] = (),
            hand_over: Sequence[int] = (),
        ) -> Exchanged:
            self.calls += 1
            if self.calls == 1:  # the first transaction: hold it while others queue up
                self.entered.set()
                self.release.wait(5)
                return Exchanged(claims=[Claim(i, i, f"u{i}@example.com", {}, 1) for i in claim])
            raise RuntimeError("database went away")

    store = Broken()
    group = ClaimGroup(store)  # type: ignore[arg-type]
    errors: list[BaseException] = []
    first: list[Claim] = []

    def claim(i: int) -> None:
        try:
            result = group.claim_ids("r", [i])
            if i == 0:
                first.extend(result)
        except RuntimeError as exc:
            errors.append(exc)

    leader = threading.Thread(target=claim, args=(0,))
    leader.start()
    assert store.entered.wait(5)
    others = [threading.Thread(target=claim, args=(i,)) for i in range(1, 6)]
    for t in others:
        t.start()
    while len(group._waiting) < 5:  # all five queued behind the first transaction
        threading.Event().wait(0.01)
    store.release.set()
    for t in [leader, *others]:
        t.join(5)
    assert [c.id for c in first] == [0]
    assert len(errors) == 5 and store.calls == 2  # one failed transaction for all five


def test_nothing_to_claim_or_record_is_no_transaction(db_url: str) -> None:
    group = ClaimGroup(Ledger(db_url))
    assert group.claim_ids("no-such-run", [], record=[]) == []
    assert group.transactions == 0


def test_hand_overs_are_grouped_and_each_thread_gets_its_own(db_url: str) -> None:
    """Every message is handed over before it is sent: with many connections those
    transactions are shared too, and each thread learns which of its rows it still holds."""
    ledger = Ledger(db_url)
    run_id = _run(ledger, 200)
    ids = ledger.pending_ids(run_id, 0, 10**9)
    group = ClaimGroup(ledger)
    assert len(group.claim_ids(run_id, ids, token="t")) == 200
    handed: dict[int, set[int]] = {}
    start = threading.Barrier(10)

    def loop(k: int) -> None:
        mine = ids[k::10]
        start.wait()
        got: set[int] = set()
        previous: list[Outcome] = []
        for i in mine:
            got |= group.exchange(run_id, token="t", record=previous, hand_over=[i]).handed
            previous = [Outcome(i, "sent", smtp_code=250, smtp_reply="ok")]
        group.record(previous, token="t")
        handed[k] = got

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(10):
        assert handed[k] == set(ids[k::10])
    assert ledger.counts(run_id)["sent"] == 200
    assert group.transactions < 200 + 1  # 200 hand-overs and a claim, grouped
