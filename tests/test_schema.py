"""The ledger schema as a public interface: migration 0002 (events, indexes, views), the views'
numbers on SQLite and Postgres, docs/schema.md (every table, view and column documented; its
example queries run), upgrading a database from 0001 with its data intact, and downgrading."""

from __future__ import annotations

import importlib.util
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine, Table, insert, inspect, text, update

from mailcast.errors import SchemaOutdatedError
from mailcast.ledger import schema, views
from mailcast.ledger.models import Base, Delivery, Event, Run
from mailcast.ledger.schema import get_engine, head_revision, upgrade
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from tests.conftest import PG_ADMIN_URL, _pg_unavailable
from tests.ledger_rows import chunk_ranges, claim_pending

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "schema.md"
MIGRATION_0002 = REPO / "mailcast" / "ledger" / "migrations" / "versions" / "0002_events_views.py"
MIGRATION_0003 = REPO / "mailcast" / "ledger" / "migrations" / "versions" / "0003_tracking.py"
MIGRATION_0004 = REPO / "mailcast" / "ledger" / "migrations" / "versions" / "0004_smtp_stage.py"
MIGRATION_0009 = REPO / "mailcast" / "ledger" / "migrations" / "versions" / "0009_list_views.py"

D = cast(Table, Delivery.__table__)
E = cast(Table, Event.__table__)
R = cast(Table, Run.__table__)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database (no tables, no migration stamp) on SQLite or Postgres."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        return
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"mailcast_schema_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _pg_unavailable(f"{PG_ADMIN_URL}: {str(exc).splitlines()[0]}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    for key, engine in list(schema._engines.items()):
        if key.endswith(f"/{name}"):
            engine.dispose()
            del schema._engines[key]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _recipient(row: int, address: str, reason: str | None = None) -> Recipient:
    key = None if reason else address.lower()
    return Recipient(row, address, {"email": address}, reason, key)


def _send(
    ledger: Ledger, run_id: str, outcomes: dict[str, tuple[str, str | None, int | None]]
) -> dict[str, int]:
    """Claim every pending row and record ``address -> (status, reason, smtp_code)``; returns
    ``address -> delivery id``."""
    claims = claim_pending(ledger, run_id, 1000)
    ids = {c.address: c.id for c in claims}
    ledger.record(
        [
            Outcome(ids[a], status, reason=reason, smtp_code=code, message_id=f"<{a}>")
            for a, (status, reason, code) in outcomes.items()
        ]
    )
    return ids


def _events(engine: Engine, run_id: str, *events: tuple[int, str, dict[str, Any] | None]) -> None:
    now = datetime.now(UTC)
    rows = [
        {"delivery_id": d, "run_id": run_id, "kind": kind, "detail": detail,
         "occurred_at": now - timedelta(minutes=i), "created_at": now}
        for i, (d, kind, detail) in enumerate(events)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(E), rows)


def _doc_objects() -> dict[str, tuple[str, set[str]]]:
    """``name -> (Table|View, documented columns)`` from the doc's ``## Table `x``` sections."""
    found: dict[str, tuple[str, set[str]]] = {}
    parts = re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.M)
    for part in parts:
        m = re.match(r"(Table|View) `(\w+)`\n", part)
        if m:
            cols = set(re.findall(r"^\| `(\w+)` \|", part, flags=re.M))
            found[m.group(2)] = (m.group(1), cols)
    return found


def _doc_queries() -> list[tuple[str, str]]:
    """(heading, SQL) of each example query: the ```sql block under each ### heading."""
    section = DOC.read_text(encoding="utf-8").split("## Example queries", 1)[1]
    queries = []
    for chunk in re.split(r"^### ", section, flags=re.M)[1:]:
        heading = chunk.splitlines()[0].strip()
        blocks = re.findall(r"^```sql\n(.*?)^```", chunk, flags=re.M | re.S)
        assert len(blocks) == 1, f"example {heading!r} needs exactly one ```sql block"
        queries.append((heading, blocks[0].strip().rstrip(";")))
    return queries


def _migration(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_mig_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(engine: Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


# -- the schema and its documentation ---------------------------------------------------------


def test_doc_names_every_table_view_and_column(db_url: str) -> None:
    ledger = Ledger(db_url)
    insp = inspect(ledger.engine)
    actual: dict[str, tuple[str, set[str]]] = {}
    for name in insp.get_table_names():
        actual[name] = ("Table", {c["name"] for c in insp.get_columns(name)})
    for name in insp.get_view_names():
        actual[name] = ("View", {c["name"] for c in insp.get_columns(name)})
    assert {"campaigns", "runs", "deliveries", "events", "alembic_version"} <= set(actual)
    assert {"campaign_summary", "delivery_facts"} <= set(actual)
    documented = _doc_objects()
    assert set(documented) == set(actual)
    for name, (kind, cols) in actual.items():
        assert documented[name][0] == kind, name
        assert documented[name][1] == cols, f"{name}: documented columns differ"


def test_views_have_the_documented_columns_in_order(db_url: str) -> None:
    ledger = Ledger(db_url)
    insp = inspect(ledger.engine)
    for name in views.VIEW_NAMES:
        assert [c["name"] for c in insp.get_columns(name)] == list(views.COLUMNS[name])


def test_views_module_matches_the_head_migration() -> None:
    """views.py holds the current definitions; 0003 holds a frozen copy of the campaign views
    and 0009 one of the list views (while they are the migrations that last defined them, the
    copies must be identical to views.py)."""
    migration = _migration(MIGRATION_0003)
    lists = _migration(MIGRATION_0009)
    assert migration.revision == "0003" and head_revision() >= "0009"
    later = [p for p in sorted(MIGRATION_0003.parent.glob("0*.py")) if p.name > MIGRATION_0003.name]
    # (0007 rebuilds the events table on SQLite and creates 0003's views again, from 0003)
    assert [p.name for p in later if "def view_sql" in p.read_text()] == [MIGRATION_0009.name], (
        "a later migration redefines views: compare views.py with it instead"
    )
    assert tuple(migration.VIEW_NAMES) + tuple(lists.VIEW_NAMES) == views.VIEW_NAMES
    assert tuple(lists.VIEW_NAMES) == views.LIST_VIEW_NAMES
    for dialect in ("sqlite", "postgresql"):
        for name in migration.VIEW_NAMES:
            assert migration.view_sql(name, dialect) == views.view_sql(name, dialect)
        for name in lists.VIEW_NAMES:
            assert lists.view_sql(name, dialect) == views.view_sql(name, dialect)
    with pytest.raises(ValueError):
        views.view_sql("campaign_summary", "mysql")


def test_indexes_and_constraints_match_the_models(db_url: str) -> None:
    ledger = Ledger(db_url)
    insp = inspect(ledger.engine)
    for table in Base.metadata.sorted_tables:
        have = {
            i["name"] for i in insp.get_indexes(table.name) if not i.get("duplicates_constraint")
        }
        assert have == {i.name for i in table.indexes}, table.name
        uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints(table.name)}
        model_uniques = {
            tuple(c.name for c in u.columns)
            for u in table.constraints
            if isinstance(u, sa.UniqueConstraint)
        } | {(c.name,) for c in table.columns if c.unique}
        assert uniques == model_uniques, table.name
        checks = {c["name"] for c in insp.get_check_constraints(table.name)}
        model_checks = {
            c.name for c in table.constraints if isinstance(c, sa.CheckConstraint) and c.name
        }
        assert model_checks <= checks, table.name
        fks = {
            (fk["referred_table"], (fk.get("options") or {}).get("ondelete"))
            for fk in insp.get_foreign_keys(table.name)
        }
        model_fks = {(fk.column.table.name, fk.ondelete) for fk in table.foreign_keys}
        assert fks == model_fks, table.name
    assert {"ix_deliveries_sent_at", "ix_deliveries_address_key"} <= {
        i["name"] for i in insp.get_indexes("deliveries")
    }
    assert "ix_runs_created_at" in {i["name"] for i in insp.get_indexes("runs")}


def test_events_accept_only_known_kinds_and_go_with_their_delivery(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = ledger.create_run(f"kinds-{uuid.uuid4().hex[:6]}", {}, dry_run=False, transport=None)
    ledger.plan(run_id, [_recipient(2, "k@example.com")])
    ids = _send(ledger, run_id, {"k@example.com": ("sent", None, 250)})
    _events(ledger.engine, run_id, (ids["k@example.com"], "open", None))
    with pytest.raises(sa.exc.IntegrityError):
        _events(ledger.engine, run_id, (ids["k@example.com"], "opened", None))
    with ledger.engine.begin() as conn:
        conn.execute(sa.delete(D).where(D.c.id == ids["k@example.com"]))
        assert conn.execute(sa.select(sa.func.count()).where(E.c.run_id == run_id)).scalar() == 0


# -- the views' numbers -----------------------------------------------------------------------


def test_campaign_summary_counts_and_rates_exactly(db_url: str) -> None:
    ledger = Ledger(db_url)
    campaign = f"summary-{uuid.uuid4().hex[:8]}"
    run_id = ledger.create_run(campaign, {}, dry_run=False, transport="127.0.0.1:25")
    rows = [_recipient(2, "bad", "invalid address: no @"), _recipient(3, "x@example.com")]
    rows[1] = _recipient(3, "dup@example.com", "duplicate of row 4")
    rows += [_recipient(i, f"r{i}@example.com") for i in range(4, 16)]  # 12 valid
    ledger.plan(run_id, rows)
    ((lo, hi),) = chunk_ranges(ledger, run_id, 1000)
    first = ledger.claim_ids(run_id, ledger.pending_ids(run_id, lo, hi)[:2], token="t")
    ledger.exchange(run_id, token="t", hand_over=[c.id for c in first])  # on the wire
    assert ledger.mark_unknown(run_id) == 2  # 2 unknown
    claims = claim_pending(ledger, run_id, 8, lo, hi)
    sent = claims[:6]
    ledger.record(
        [Outcome(c.id, "sent", smtp_code=250) for c in sent]
        + [Outcome(claims[6].id, "failed", reason="rejected at RCPT: 550 no", smtp_code=550)]
        + [Outcome(claims[7].id, "pending", reason="temporary: 451 later (attempt 1 of 3)")]
    )
    claim_pending(ledger, run_id, 1, lo, hi)  # left `sending`
    s0, s1, s2, s3, s4, s5 = (c.id for c in sent)
    _events(
        ledger.engine, run_id,
        (s0, "open", {"user_agent": "a"}), (s0, "open", None), (s0, "open", None),
        (s1, "open", None), (s2, "open", None),
        (s0, "click", {"url": "https://example.com/a"}), (s0, "click", None), (s1, "click", None),
        (s3, "bounce", {"type": "hard", "code": 550}), (s3, "bounce", {"type": "hard"}),
        (s4, "bounce", {"type": "soft", "code": 452}), (s5, "deferral", {"code": 451}),
        (s1, "unsubscribe", None), (s2, "complaint", None),
    )  # fmt: skip
    # a second run of the campaign with nothing sent: zeros, and rates NULL (not a division error)
    empty_run = ledger.create_run(campaign, {}, dry_run=True, transport=None)

    got = _rows(ledger.engine, "SELECT * FROM campaign_summary WHERE run_id = :r", r=run_id)
    assert len(got) == 1
    row = got[0]
    assert list(row) == list(views.COLUMNS["campaign_summary"])
    expected_counts = {
        "run_id": run_id, "campaign": campaign, "run_status": "planning", "recipients": 14,
        "sent": 6, "failed": 1, "skipped": 2, "unknown": 2, "pending": 3,
        "opens": 5, "unique_opens": 3, "clicks": 3, "unique_clicks": 2,
        "bounces": 2, "hard_bounces": 1, "unsubscribes": 1, "complaints": 1,
    }  # fmt: skip
    assert {k: row[k] for k in expected_counts} == expected_counts
    assert not row["dry_run"]
    assert row["created_at"] is not None
    expected_rates = {
        "delivery_rate": 6 / 7, "open_rate": 3 / 6, "click_rate": 2 / 6,
        "click_to_open_rate": 2 / 3, "bounce_rate": 2 / 6, "unsubscribe_rate": 1 / 6,
    }  # fmt: skip
    for key, value in expected_rates.items():
        assert isinstance(row[key], float), key
        assert row[key] == pytest.approx(value, rel=1e-12), key

    (empty,) = _rows(ledger.engine, "SELECT * FROM campaign_summary WHERE run_id = :r", r=empty_run)
    assert empty["dry_run"]
    assert [empty[k] for k in ("recipients", "sent", "opens", "bounces")] == [0, 0, 0, 0]
    assert all(empty[k] is None for k in expected_rates)

    facts = _rows(
        ledger.engine, "SELECT * FROM delivery_facts WHERE run_id = :r ORDER BY row_no", r=run_id
    )
    assert len(facts) == 14
    by_id = {f["delivery_id"]: f for f in facts}
    flags = ("opened", "clicked", "bounced", "hard_bounced", "unsubscribed", "complained")
    assert [bool(by_id[s0][f]) for f in flags] == [True, True, False, False, False, False]
    assert (by_id[s0]["opens"], by_id[s0]["clicks"]) == (3, 2)
    assert [bool(by_id[s1][f]) for f in flags] == [True, True, False, False, True, False]
    assert [bool(by_id[s2][f]) for f in flags] == [True, False, False, False, False, True]
    assert [bool(by_id[s3][f]) for f in flags] == [False, False, True, True, False, False]
    assert [bool(by_id[s4][f]) for f in flags] == [False, False, True, False, False, False]
    assert not any(by_id[s5][f] for f in flags)  # a deferral is no outcome
    assert sum(bool(f["opened"]) for f in facts) == 3
    assert {f["status"] for f in facts if f["sent_day"] is not None} == {"sent"}
    assert all(f["campaign"] == campaign and not f["dry_run"] for f in facts)
    assert facts[0]["reason"] == "invalid address: no @" and facts[0]["address_key"] is None


def test_sent_day_is_the_utc_day(db_url: str) -> None:
    ledger = Ledger(db_url)
    run_id = ledger.create_run(f"day-{uuid.uuid4().hex[:6]}", {}, dry_run=False, transport=None)
    ledger.plan(run_id, [_recipient(2, "late@example.com")])
    ids = _send(ledger, run_id, {"late@example.com": ("sent", None, 250)})
    with ledger.engine.begin() as conn:
        conn.execute(
            update(D)
            .where(D.c.id == ids["late@example.com"])
            .values(sent_at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC))
        )
    with ledger.engine.connect() as conn:
        if ledger.is_postgres:  # the session's time zone must not shift the day
            conn.exec_driver_sql("SET TIME ZONE 'Pacific/Auckland'")
        day = conn.execute(
            text("SELECT sent_day FROM delivery_facts WHERE run_id = :r"), {"r": run_id}
        ).scalar()
        conn.rollback()
    assert str(day) == "2026-03-01"


# -- the example queries in docs/schema.md ----------------------------------------------------


def _populate_for_examples(ledger: Ledger) -> None:
    """spring (real): a, b, c sent, d failed, one invalid, two duplicates;
    autumn (real): c, e sent; autumn (dry run): f sent. Events: a opens twice and clicks,
    b opens, c hard-bounces in spring and soft-bounces in autumn, e opens, f opens (dry run)."""
    dry = ledger.create_run("autumn", {}, dry_run=True, transport="outbox out")
    ledger.plan(dry, [_recipient(2, "f@example.com")])
    f = _send(ledger, dry, {"f@example.com": ("sent", None, 250)})
    _events(ledger.engine, dry, (f["f@example.com"], "open", None))

    autumn = ledger.create_run("autumn", {}, dry_run=False, transport="127.0.0.1:25")
    ledger.plan(autumn, [_recipient(2, "c@example.com"), _recipient(3, "e@example.com")])
    ids = _send(
        ledger, autumn, {"c@example.com": ("sent", None, 250), "e@example.com": ("sent", None, 250)}
    )
    _events(
        ledger.engine, autumn,
        (ids["c@example.com"], "bounce", {"type": "soft", "code": 452}),
        (ids["e@example.com"], "open", None),
    )  # fmt: skip
    autumn_sent = {ids["c@example.com"]: datetime(2026, 3, 2, 10, tzinfo=UTC),
                   ids["e@example.com"]: datetime(2026, 3, 2, 11, tzinfo=UTC)}  # fmt: skip

    spring = ledger.create_run("spring", {}, dry_run=False, transport="127.0.0.1:25")
    rows = [_recipient(i, f"{a}@example.com") for i, a in enumerate("abcd", start=2)]
    rows += [
        _recipient(6, "nope", "invalid address: no @"),
        _recipient(7, "A@example.com", "duplicate of row 2"),
        _recipient(8, "a@Example.com", "duplicate of row 2"),
    ]
    ledger.plan(spring, rows)
    ids = _send(
        ledger, spring,
        {"a@example.com": ("sent", None, 250), "b@example.com": ("sent", None, 250),
         "c@example.com": ("sent", None, 250),
         "d@example.com": ("failed", "rejected at RCPT: 550 no such user", 550)},
    )  # fmt: skip
    _events(
        ledger.engine, spring,
        (ids["a@example.com"], "open", None), (ids["a@example.com"], "open", None),
        (ids["a@example.com"], "click", {"url": "https://example.com/"}),
        (ids["b@example.com"], "open", None),
        (ids["c@example.com"], "bounce", {"type": "hard", "code": 550}),
    )  # fmt: skip
    spring_sent = {ids["a@example.com"]: datetime(2026, 3, 1, 8, tzinfo=UTC),
                   ids["b@example.com"]: datetime(2026, 3, 1, 23, 59, tzinfo=UTC),
                   ids["c@example.com"]: datetime(2026, 3, 2, 0, 1, tzinfo=UTC)}  # fmt: skip

    with ledger.engine.begin() as conn:
        for delivery_id, at in {**autumn_sent, **spring_sent}.items():
            conn.execute(update(D).where(D.c.id == delivery_id).values(sent_at=at))
        for i, run_id in enumerate((dry, autumn, spring)):  # spring is the latest run
            conn.execute(update(R).where(R.c.id == run_id).values(created_at=T0 + timedelta(i)))


def test_example_queries_in_the_doc_run_and_give_the_expected_rows(empty_url: str) -> None:
    ledger = Ledger(empty_url)
    _populate_for_examples(ledger)
    queries = _doc_queries()
    assert len(queries) == 5
    results = [_rows(ledger.engine, sql) for _, sql in queries]
    totals, per_day, reasons, opened_only, bounced = results

    # 1. totals and rates per campaign (the dry run is left out)
    assert [r["campaign"] for r in totals] == ["autumn", "spring"]
    autumn, spring = totals
    assert {k: autumn[k] for k in ("runs", "recipients", "sent", "failed")} == {
        "runs": 1, "recipients": 2, "sent": 2, "failed": 0
    }  # fmt: skip
    assert (autumn["unique_opens"], autumn["unique_clicks"], autumn["bounces"]) == (1, 0, 1)
    assert [autumn[k] for k in ("delivery_rate", "open_rate", "click_rate", "bounce_rate")] == [
        1.0, 0.5, 0.0, 0.5
    ]  # fmt: skip
    assert {k: spring[k] for k in ("runs", "recipients", "sent", "failed")} == {
        "runs": 1, "recipients": 7, "sent": 3, "failed": 1
    }  # fmt: skip
    assert (spring["unique_opens"], spring["unique_clicks"], spring["bounces"]) == (2, 1, 1)
    rates = [spring[k] for k in ("delivery_rate", "open_rate", "click_rate", "bounce_rate")]
    assert rates == pytest.approx([3 / 4, 2 / 3, 1 / 3, 1 / 3])

    # 2. sent per (UTC) day
    assert [(str(r["sent_day"]), r["campaign"], r["sent"]) for r in per_day] == [
        ("2026-03-01", "spring", 2), ("2026-03-02", "autumn", 2), ("2026-03-02", "spring", 1)
    ]  # fmt: skip

    # 3. reasons of the latest run (spring), ranked
    assert [(r["status"], r["reason"], r["deliveries"], r["reason_rank"]) for r in reasons] == [
        ("skipped", "duplicate of row 2", 2, 1),
        ("failed", "rejected at RCPT: 550 no such user", 1, 2),
        ("skipped", "invalid address: no @", 1, 2),
    ]

    # 4. opened but did not click (a clicked; f was a dry run)
    assert [(r["campaign"], r["address"], r["opens"]) for r in opened_only] == [
        ("autumn", "e@example.com", 1), ("spring", "b@example.com", 1)
    ]  # fmt: skip

    # 5. bounced addresses across campaigns
    assert [
        (r["address_key"], r["campaigns"], r["bounced_deliveries"], r["hard_bounces"])
        for r in bounced
    ] == [("c@example.com", 2, 2, 1)]
    assert bounced[0]["last_sent_at"] is not None


# -- migrating --------------------------------------------------------------------------------

_campaigns = sa.table(
    "campaigns", sa.column("id", sa.Integer), sa.column("name", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)  # fmt: skip
_runs = sa.table(
    "runs", sa.column("id", sa.String), sa.column("campaign_id", sa.Integer),
    sa.column("status", sa.String), sa.column("dry_run", sa.Boolean),
    sa.column("spec", sa.JSON), sa.column("transport", sa.String),
    sa.column("recipients", sa.Integer), sa.column("columns", sa.JSON),
    sa.column("created_at", sa.DateTime(timezone=True)),
)  # fmt: skip
_deliveries = sa.table(
    "deliveries", sa.column("run_id", sa.String), sa.column("row_no", sa.Integer),
    sa.column("address", sa.String), sa.column("address_key", sa.String),
    sa.column("fields", sa.JSON), sa.column("status", sa.String),
    sa.column("reason", sa.Text), sa.column("attempts", sa.Integer),
    sa.column("smtp_code", sa.Integer), sa.column("message_id", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("sent_at", sa.DateTime(timezone=True)),
)  # fmt: skip

LEGACY_RUN = "11111111-2222-3333-4444-555555555555"


def _fill_at_0001(engine: Engine) -> None:
    """A campaign, a run and six deliveries written with Core at the 0001 schema."""
    statuses = [
        ("sent", None, 250), ("sent", None, 250), ("sent", None, 250),
        ("failed", "rejected at RCPT: 550 unknown user", 550),
        ("skipped", "duplicate of row 2", None), ("pending", None, None),
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(_campaigns).values(id=7, name="legacy", created_at=T0))
        conn.execute(
            insert(_runs).values(
                id=LEGACY_RUN, campaign_id=7, status="paused", dry_run=False,
                spec={"name": "legacy", "subject": "Grüße"}, transport="127.0.0.1:25",
                recipients=len(statuses), columns=["email", "name"], created_at=T0,
            )
        )  # fmt: skip
        conn.execute(
            insert(_deliveries),
            [
                {"run_id": LEGACY_RUN, "row_no": i + 2, "address": f"u{i}@example.com",
                 "address_key": None if status == "skipped" else f"u{i}@example.com",
                 "fields": {"email": f"u{i}@example.com", "name": f"Zoë {i}"},
                 "status": status, "reason": reason, "attempts": 0 if status == "pending" else 1,
                 "smtp_code": code, "message_id": f"<m{i}@example.com>" if code else None,
                 "created_at": T0, "updated_at": T0,
                 "sent_at": T0 + timedelta(hours=i) if status == "sent" else None}
                for i, (status, reason, code) in enumerate(statuses)
            ],
        )  # fmt: skip


_COLUMNS_AT_0001: dict[str, list[str]] = {}


def _snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the 0001 tables, in the columns they had at 0001 (later migrations may add
    columns; the data that was there must stay as it was)."""
    if not _COLUMNS_AT_0001:  # read off a scratch database at 0001
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        scratch = create_engine("sqlite://", poolclass=StaticPool)
        upgrade(scratch, "0001")
        insp = inspect(scratch)
        for t in ("campaigns", "runs", "deliveries"):
            _COLUMNS_AT_0001[t] = [c["name"] for c in insp.get_columns(t)]
        scratch.dispose()
    out = {}
    with engine.connect() as conn:
        for t in ("campaigns", "runs", "deliveries"):
            cols = _COLUMNS_AT_0001[t]
            query = f"SELECT {', '.join(cols)} FROM {t} ORDER BY 1"
            out[t] = [tuple(r) for r in conn.execute(text(query))]
    return out


def test_upgrade_from_0001_keeps_the_data_and_the_views_work_on_it(empty_url: str) -> None:
    engine = get_engine(empty_url)
    upgrade(engine, "0001")
    assert not inspect(engine).has_table("events")
    _fill_at_0001(engine)
    before = _snapshot(engine)
    assert [len(before[t]) for t in ("campaigns", "runs", "deliveries")] == [1, 1, 6]

    upgrade(engine)  # what `mailcast db upgrade` does
    assert schema.current_revision(engine) == head_revision()
    assert _snapshot(engine) == before
    stages = _rows(engine, "SELECT status, smtp_stage FROM deliveries ORDER BY id")
    assert [(r["status"], r["smtp_stage"]) for r in stages] == [
        ("sent", "DATA"), ("sent", "DATA"), ("sent", "DATA"), ("failed", "RCPT"),
        ("skipped", None), ("pending", None),
    ]  # fmt: skip

    (summary,) = _rows(engine, "SELECT * FROM campaign_summary")
    assert {k: summary[k] for k in ("run_id", "campaign", "run_status", "recipients", "sent",
                                    "failed", "skipped", "unknown", "pending", "opens")} == {
        "run_id": LEGACY_RUN, "campaign": "legacy", "run_status": "paused", "recipients": 6,
        "sent": 3, "failed": 1, "skipped": 1, "unknown": 0, "pending": 1, "opens": 0,
    }  # fmt: skip
    assert summary["delivery_rate"] == pytest.approx(0.75)
    assert summary["open_rate"] == 0.0 and summary["click_to_open_rate"] is None
    facts = _rows(engine, "SELECT * FROM delivery_facts ORDER BY row_no")
    assert [f["status"] for f in facts] == ["sent"] * 3 + ["failed", "skipped", "pending"]
    assert [str(f["sent_day"]) for f in facts[:3]] == ["2026-03-01"] * 3

    # the ledger opens it, and old rows take events
    ledger = Ledger(empty_url)
    assert ledger.counts(LEGACY_RUN)["sent"] == 3
    assert ledger.run(LEGACY_RUN).spec["subject"] == "Grüße"
    _events(engine, LEGACY_RUN, (facts[0]["delivery_id"], "open", None))
    (summary,) = _rows(engine, "SELECT unique_opens, open_rate FROM campaign_summary")
    assert summary["unique_opens"] == 1 and summary["open_rate"] == pytest.approx(1 / 3)


def test_upgrade_to_0004_gives_old_rows_their_stage_and_retry_keeps_working(
    empty_url: str,
) -> None:
    """Rows written before 0004 kept their SMTP stage only in the reason: the migration reads it
    once, so `retry --failed` (which now goes by smtp_code/smtp_stage) reopens the same old rows
    as before, plus the sender's refusals; mailcast's own SMTPUTF8 refusal loses its fake 553."""
    from mailcast.engine.resume import reopen_run

    engine = get_engine(empty_url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.execute(insert(_campaigns).values(id=8, name="old", created_at=T0))
        conn.execute(
            insert(_runs).values(
                id=LEGACY_RUN, campaign_id=8, status="paused", dry_run=False, spec={},
                transport=None, recipients=7, columns=["email"], created_at=T0,
            )
        )  # fmt: skip
    upgrade(engine, "0003")
    old = [  # (reason, smtp_code) as 0003-era mailcast wrote them, all failed
        ("hard bounce: 550 5.1.1 no such user (at RCPT)", 550),
        ("rejected at DATA: 554 5.7.1 spam", 554),
        ("rejected at MAIL: 553 5.7.1 sender rejected", 553),
        ("rejected at MAIL: 553 server does not support SMTPUTF8 for a non-ASCII address", 553),
        ("temporary failure after 3 attempts: 451 4.3.0 try later", 451),
        ("temporary failure after 3 attempts: connection lost during RCPT: timed out", None),
        ("template error: body.txt:3: 'x' is undefined", None),
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(_deliveries),
            [
                {"run_id": LEGACY_RUN, "row_no": i + 2, "address": f"o{i}@example.com",
                 "address_key": f"o{i}@example.com", "fields": {}, "status": "failed",
                 "reason": reason, "attempts": 1, "smtp_code": code, "message_id": None,
                 "created_at": T0, "updated_at": T0, "sent_at": None}
                for i, (reason, code) in enumerate(old)
            ],
        )  # fmt: skip
    upgrade(engine)
    got = _rows(engine, "SELECT smtp_code, smtp_stage FROM deliveries ORDER BY row_no")
    assert [(r["smtp_code"], r["smtp_stage"]) for r in got] == [
        (550, "RCPT"), (554, "DATA"), (553, "MAIL"), (None, None), (451, None), (None, "RCPT"),
        (None, None),
    ]  # fmt: skip

    ledger = Ledger(empty_url)
    assert reopen_run(ledger, LEGACY_RUN, retry_failed=True)["reopened"] == 3
    pending = _rows(engine, "SELECT row_no FROM deliveries WHERE status = 'pending'")
    assert sorted(r["row_no"] for r in pending) == [4, 6, 7]  # sender refused, the 2 temporary


def test_a_database_at_0001_is_refused_with_the_upgrade_hint(empty_url: str) -> None:
    engine = get_engine(empty_url)
    upgrade(engine, "0001")
    with pytest.raises(SchemaOutdatedError) as exc:
        Ledger(empty_url)
    assert "mailcast db upgrade" in exc.value.hint
    assert "0001" in str(exc.value) and head_revision() in str(exc.value)
    assert not inspect(engine).has_table("events")  # refused, not silently upgraded


def test_downgrade_to_0001_drops_events_indexes_and_views_only(empty_url: str) -> None:
    from alembic import command

    ledger = Ledger(empty_url)
    run_id = ledger.create_run("down", {}, dry_run=False, transport=None)
    ledger.plan(run_id, [_recipient(2, "d@example.com")])
    ids = _send(ledger, run_id, {"d@example.com": ("sent", None, 250)})
    _events(ledger.engine, run_id, (ids["d@example.com"], "open", None))
    before = _snapshot(ledger.engine)

    cfg = schema._alembic_config(ledger.engine)
    with ledger.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    insp = inspect(ledger.engine)
    assert not insp.has_table("events")
    assert not set(insp.get_view_names()) & set(views.VIEW_NAMES)
    assert "ix_deliveries_sent_at" not in {i["name"] for i in insp.get_indexes("deliveries")}
    assert "ix_runs_created_at" not in {i["name"] for i in insp.get_indexes("runs")}
    assert _snapshot(ledger.engine) == before

    upgrade(ledger.engine)  # and back up again
    assert _rows(ledger.engine, "SELECT sent FROM campaign_summary") == [{"sent": 1}]
