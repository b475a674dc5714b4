"""The ledger on SQLite and real Postgres: planning, claiming, recording, recovery."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import inspect

from mailcast.errors import RunNotFoundError, SchemaOutdatedError
from mailcast.ledger.models import Base
from mailcast.ledger.schema import get_engine, upgrade
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.ledger_rows import chunk_ranges, claim_pending


def _recipients(n: int, bad_every: int = 0) -> list[Recipient]:
    rows = []
    for i in range(n):
        addr = f"user{i}@example.com"
        bad = bad_every and i % bad_every == 0
        rows.append(
            Recipient(
                row=i + 2,
                address=addr,
                fields={"email": addr, "name": f"Zoë {i}"},
                reason="invalid address: test" if bad else None,
                key=None if bad else addr,
            )
        )
    return rows


def _run(ledger: Ledger, n: int = 100, bad_every: int = 0) -> str:
    run_id = ledger.create_run("c1", {"name": "c1"}, dry_run=False, transport="127.0.0.1:25")
    ledger.plan(run_id, _recipients(n, bad_every), ["email", "name"])
    return run_id


def test_plan_records_every_row_with_status(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 100, bad_every=10)
    counts = ledger.counts(run_id)
    assert counts["pending"] == 90
    assert counts["skipped"] == 10
    assert ledger.run(run_id).recipients == 100
    assert ledger.reasons(run_id)[0] == ("skipped", "invalid address: test", 10)
    assert ledger.columns(run_id) == ["email", "name"]


def test_duplicates_can_be_recorded_as_skipped(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = ledger.create_run("c2", {}, dry_run=True, transport=None)
    rows = [
        Recipient(2, "a@example.com", {}, None, "a@example.com"),
        Recipient(3, "A@example.com", {}, "duplicate of row 2", None),
    ]
    ledger.plan(run_id, rows)
    assert ledger.counts(run_id)["skipped"] == 1


def test_claim_marks_sending_and_is_never_repeated(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 50)
    ids = list(ledger.all_pending_ids(run_id))
    first = ledger.claim_ids(run_id, ids[:20], token="a")
    second = ledger.claim_ids(run_id, ids, token="b")
    assert len(first) == 20 and len(second) == 30
    assert not {c.id for c in first} & {c.id for c in second}
    assert all(c.attempts == 1 for c in first)
    assert ledger.counts(run_id)["sending"] == 50
    ledger.record([Outcome(c.id, "sent", smtp_code=250, smtp_reply="ok") for c in first])
    assert ledger.claim_ids(run_id, ids, token="c") == []  # none taken twice
    # A crash: of `second`, 10 were handed over (their messages may be at the server), 20 only
    # reserved. Resume marks the 10 unknown (never sent again) and sends the 20.
    handed = ledger.exchange(run_id, token="b", hand_over=[c.id for c in second[:10]]).handed
    assert handed == {c.id for c in second[:10]}
    assert ledger.mark_unknown(run_id) == 10
    counts = ledger.counts(run_id)
    assert counts["sent"] == 20 and counts["unknown"] == 10 and counts["pending"] == 20
    again = ledger.claim_ids(run_id, ids, token="d")
    assert {c.id for c in again} == {c.id for c in second[10:]}
    assert all(c.attempts == 1 for c in again)  # the reservation was not an attempt
    assert ledger.reopen(run_id, ["unknown"]) == 10
    assert len(ledger.claim_ids(run_id, ids, token="e")) == 10


def test_a_sender_hands_over_only_rows_it_still_holds(db_url: str) -> None:
    """A resume elsewhere takes reserved rows back; the first sender then neither sends them
    (its hand-over is refused) nor overwrites what the new holder records."""
    ledger = Ledger(db_url)
    run_id = _run(ledger, 5)
    ids = list(ledger.all_pending_ids(run_id))
    assert len(ledger.claim_ids(run_id, ids, token="a")) == 5
    assert ledger.mark_unknown(run_id) == 0  # a resume: nothing was handed over
    taken = ledger.claim_ids(run_id, ids[:2], token="b")
    assert [c.id for c in taken] == ids[:2]
    late = ledger.exchange(run_id, token="a", hand_over=ids)
    assert late.handed == set()  # two are b's now, three are pending again: a sends nothing
    ledger.record([Outcome(i, "pending") for i in ids], token="a")
    assert ledger.exchange(run_id, token="b", hand_over=ids[:2]).handed == set(ids[:2])
    counts = ledger.counts(run_id)
    assert counts["sending"] == 2 and counts["pending"] == 3


def test_a_claim_repeated_after_a_lost_reply_takes_its_own_rows_again(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 4)
    ids = list(ledger.all_pending_ids(run_id))
    first = ledger.claim_ids(run_id, ids, token="a")
    again = ledger.claim_ids(run_id, ids, token="a")  # the reply to the first was lost
    assert [c.id for c in again] == [c.id for c in first]
    assert all(c.attempts == 1 for c in again)
    assert ledger.claim_ids(run_id, ids, token="z") == []
    # once handed over, a row is not claimed again, even by its holder
    assert ledger.exchange(run_id, token="a", hand_over=ids[:1]).handed == {ids[0]}
    assert [c.id for c in ledger.claim_ids(run_id, ids, token="a")] == ids[1:]


def test_claim_ids_takes_only_the_ids_asked_for(db_url: str) -> None:
    """A row waiting for its retry is pending again, but the engine leaves its id out until it
    is due (ChunkWork): claim_ids takes the ids it is given and no other."""
    ledger = Ledger(db_url)
    run_id = _run(ledger, 10)
    ((lo, hi),) = chunk_ranges(ledger, run_id, 1000)
    claims = claim_pending(ledger, run_id, 10, lo, hi)
    ledger.record([Outcome(claims[0].id, "pending", reason="temporary: 451 later")])
    ledger.record([Outcome(c.id, "pending") for c in claims[1:]])
    waiting = claims[0].id
    again = ledger.claim_ids(
        run_id, [i for i in ledger.pending_ids(run_id, lo, hi) if i != waiting]
    )
    assert waiting not in {c.id for c in again}
    assert len(again) == 9
    assert ledger.counts(run_id)["pending"] == 1 and ledger.pending_ids(run_id, lo, hi) == [waiting]


def test_concurrent_claims_take_each_row_once(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 600)
    ((lo, hi),) = chunk_ranges(ledger, run_id, 10_000)
    taken: list[int] = []
    lock = threading.Lock()

    def worker() -> None:  # the ids read, then claimed: others may have taken some meanwhile
        while ids := ledger.pending_ids(run_id, lo, hi)[:7]:
            claims = ledger.claim_ids(run_id, ids)
            assert {c.id for c in claims} <= set(ids)
            with lock:
                taken.extend(c.id for c in claims)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 600 == len(set(taken))


def test_chunks_cover_open_rows_only(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 25, bad_every=5)  # 5 skipped
    assert len(ledger.all_pending_ids(run_id)) == 20
    ranges = chunk_ranges(ledger, run_id, 6)
    assert len(ranges) == 4  # 20 pending rows in chunks of 6
    total = sum(len(claim_pending(ledger, run_id, 100, lo, hi)) for lo, hi in ranges)
    assert total == 20


def test_run_lookup_by_prefix_and_missing(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 1)
    assert ledger.run(run_id[:8]).id == run_id
    with pytest.raises(RunNotFoundError) as exc:
        ledger.run("nope-nope")
    assert "mailcast runs" in exc.value.hint


def test_deliveries_stream_in_row_order(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = _run(ledger, 25)
    rows = list(ledger.deliveries(run_id, batch=7))
    assert [r["row_no"] for r in rows] == list(range(2, 27))
    assert rows[0]["fields"]["name"] == "Zoë 0"


def test_models_match_the_migrations(db_url: str) -> None:
    ledger = Ledger(db_url)
    insp = inspect(ledger.engine)
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        assert have == {c.name for c in table.columns}, table.name


def test_outdated_schema_is_refused_with_a_hint(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = get_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0000'")
    with pytest.raises(SchemaOutdatedError) as exc:
        Ledger(url)
    assert "mailcast db upgrade" in exc.value.hint


def test_planning_again_after_a_crash_reuses_the_run(db_url: str) -> None:
    from mailcast.engine.resume import run_planned

    ledger = Ledger(db_url)
    run_id = ledger.create_run("c3", {}, dry_run=True, transport=None)
    assert not run_planned(ledger, run_id)  # created, but the plan never committed
    assert ledger.create_run("c3", {}, dry_run=True, transport=None, run_id=run_id) == run_id
    ledger.plan(run_id, _recipients(3))
    ledger.set_run(run_id, status="sending")
    assert run_planned(ledger, run_id)  # a Prefect retry of the flow resumes it
    assert not run_planned(ledger, "no-such-run")


def test_hand_over_text_parameters_round_trip_through_postgres(pg_url: str) -> None:
    """The hand-over sends outcomes as text literals (arrays included): whatever a reason or
    a server's reply holds (quotes, backslashes, braces, commas, "NULL", any Unicode but NUL)
    arrives in Postgres as it was."""
    import psycopg
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from sqlalchemy.engine import make_url

    from mailcast.ledger.store import _text_param

    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    conn = psycopg.connect(conninfo, autocommit=True)
    text_ = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.one_of(st.none(), text_, st.sampled_from(["NULL", '"', "\\", "{,}"]))))
    def round_trip(values: list[str | None]) -> None:
        result = conn.pgconn.exec_params(b"SELECT $1::text[]", [_text_param(values)])
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
        back = conn.execute("SELECT %s::text[]", [values]).fetchone()
        assert back is not None and back[0] == values
        literal = result.get_value(0, 0)
        assert literal is not None
        assert conn.execute(
            "SELECT %s::text[] = %s::text[]", [literal.decode(), values]
        ).fetchone() == (True,)

    try:
        round_trip()
    finally:
        conn.close()
