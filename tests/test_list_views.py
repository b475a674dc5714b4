"""The per-list views (migration 0009) give exact figures on SQLite and Postgres: members by
status, growth per day from consent records, engagement of the real runs sent to each list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, insert, text

from mailcast.engagement import suppression
from mailcast.ledger.models import ConsentRecord
from mailcast.ledger.store import Ledger
from tests.audience_rows import add_contacts, add_list, add_members, sent_run, tag

CRT = cast(Table, ConsentRecord.__table__)


def _view(ledger: Ledger, name: str, list_name: str) -> list[dict[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT * FROM {name} WHERE list = :l"),
            {"l": list_name},
        ).mappings()
        return [dict(r) for r in rows]


def test_list_views(db_url: str) -> None:
    ledger = Ledger(db_url)
    t = tag()
    news, empty = f"news-{t}", f"empty-{t}"
    lid = add_list(ledger.engine, news, optin="double")
    add_list(ledger.engine, empty)
    people = [{"address": f"{n}@{t}.example", **extra} for n, extra in (
        ("a", {}), ("b", {}), ("c", {}), ("d", {"status": "blocklisted"}), ("e", {}), ("f", {}),
    )]  # fmt: skip
    ids = add_contacts(ledger.engine, people)
    by = {a.split("@")[0]: i for a, i in ids.items()}
    add_members(ledger.engine, lid, {by["a"]: "confirmed", by["b"]: "confirmed",
                                     by["c"]: "unconfirmed", by["d"]: "confirmed",
                                     by["e"]: "unsubscribed", by["f"]: "confirmed"})  # fmt: skip
    suppression.add(ledger.engine, [f"f@{t}.example"], "manual", source="test")

    day1 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    day2 = day1 + timedelta(hours=1)  # the next UTC day
    records = [(by["a"], "subscribe", day1), (by["a"], "confirm", day1),
               (by["b"], "subscribe", day1), (by["b"], "confirm", day2),
               (by["c"], "subscribe", day2), (by["e"], "unsubscribe", day2)]  # fmt: skip
    with ledger.engine.begin() as conn:
        conn.execute(insert(CRT), [
            {"contact_id": c, "list_id": lid, "action": a, "method": "form", "at": at}
            for c, a, at in records
        ])  # fmt: skip

    spec = {"recipients": {"list": news}}
    addresses = [f"{n}@{t}.example" for n in ("a", "b", "e")]
    sent_run(ledger, f"c1-{t}", addresses, spec=spec,
             events={addresses[0]: [("open", timedelta(hours=1)), ("open", timedelta(hours=2)),
                                    ("click", timedelta(hours=1))],
                     addresses[1]: [("open", timedelta(hours=1))],
                     addresses[2]: [("unsubscribe", timedelta(hours=1))]})  # fmt: skip
    sent_run(ledger, f"c2-{t}", addresses[:1], spec=spec)
    sent_run(ledger, f"dry-{t}", addresses, spec=spec, dry_run=True,
             events={addresses[1]: [("click", timedelta(hours=1))]})  # fmt: skip

    (members,) = _view(ledger, "list_members", news)
    assert {k: members[k] for k in ("optin", "members", "confirmed", "unconfirmed",
                                    "unsubscribed", "blocklisted", "sendable")} == {
        "optin": "double", "members": 6, "confirmed": 4, "unconfirmed": 1, "unsubscribed": 1,
        "blocklisted": 1, "sendable": 2,
    }  # fmt: skip
    (nobody,) = _view(ledger, "list_members", empty)
    assert (nobody["members"], nobody["sendable"]) == (0, 0)

    growth = sorted(_view(ledger, "list_growth", news), key=lambda r: str(r["day"]))
    assert [str(r["day"]) for r in growth] == ["2026-03-01", "2026-03-02"]
    figures = [
        (r["subscribes"], r["confirms"], r["unsubscribes"], r["joined"], r["net"],
         int(r["cumulative_net"]))
        for r in growth
    ]  # fmt: skip
    assert figures == [(2, 1, 0, 1, 1, 1), (1, 1, 1, 1, 0, 1)]
    assert _view(ledger, "list_growth", empty) == []

    (engaged,) = _view(ledger, "list_engagement", news)
    assert {k: engaged[k] for k in ("runs", "sent", "opened", "clicked", "unsubscribed",
                                    "bounced")} == {
        "runs": 2, "sent": 4, "opened": 2, "clicked": 1, "unsubscribed": 1, "bounced": 0,
    }  # fmt: skip
    assert engaged["open_rate"] == 0.5 and engaged["click_rate"] == 0.25
    assert engaged["last_run_at"] is not None
    (none,) = _view(ledger, "list_engagement", empty)
    assert (none["runs"], none["sent"], none["open_rate"]) == (0, 0, None)
