"""Segments over 1,000,000 contacts in Postgres: how long counting a few segments takes, and how
long planning a campaign sent to a 1,000,000-member list takes (plan only: nothing is sent).

    python -m bench.segment_count [-n 1000000] [--repeat 3]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Loads, into a fresh database (dropped after): N contacts with attributes (city, age as a number
or a numeric string, plan, vip) by COPY, their memberships by COPY (list ``all``: every contact,
single opt-in; list ``news``: 60 %, double opt-in, mostly confirmed), 2 % blocklisted; a real
campaign run sent to a third of them with opens and clicks (set-based INSERT … SELECT). Then
counts each segment (median of ``--repeat`` after a warm-up; target < 1 s each) and plans a
campaign to ``all`` with ``prepare_run`` (target < 30 s). (``python -m bench --only
segment-count`` runs the same, in its own process.)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SEGMENTS = {
    "city equality (GIN)": 'city = "Paris"',
    "numeric and one-of": 'age >= 30 and plan in ("pro", "team")',
    "list member and city": 'in list "news" and city = "Paris"',
    "city and opened within 30 days": 'city = "Paris" and opened any campaign within 30 days',
    "not clicked within 180 days": "not clicked within 180 days",
    "list, not clicked, created": (
        'in list "news" and not clicked within 180 days and created within 200 days'
    ),
}
CITIES = ["Paris", "Lyon", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Oslo", "Riga"]
PLANS = ["free", "free", "free", "pro", "team"]


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def load(url: str, n: int) -> dict[str, float]:
    """The contacts, lists, memberships and one campaign's deliveries and events."""
    from mailcast.ledger.store import Ledger

    ledger = Ledger(url)  # the schema
    ledger.engine.dispose()
    rnd = random.Random(12)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    took: dict[str, float] = {}
    with psycopg.connect(_conninfo(url)) as conn, conn.cursor() as cur:
        t = time.perf_counter()
        with cur.copy(
            "COPY contacts (id, address, address_key, name, attributes, status, created_at,"
            " updated_at) FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                address = f"user{i}@d{i % 5000}.example"
                age: Any = rnd.randint(18, 80)
                if i % 4 == 0:
                    age = str(age)  # imported from a CSV: a numeric string
                elif i % 97 == 0:
                    age = "n/a"
                attributes = {"city": CITIES[i % len(CITIES)], "age": age,
                              "plan": PLANS[rnd.randrange(5)], "vip": i % 13 == 0}  # fmt: skip
                created = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d} 10:00:00+00"
                status = "blocklisted" if i % 50 == 0 else "enabled"
                copy.write_row(
                    (i, address, address, f"User {i}", dumps(attributes), status, created,
                     created)
                )  # fmt: skip
        cur.execute("SELECT setval('contacts_id_seq', %s)", (n,))
        took["copy contacts"] = time.perf_counter() - t
        cur.execute(
            "INSERT INTO lists (id, name, optin, tags, created_at, updated_at) VALUES"
            " (1, 'all', 'single', '[]', now(), now()), (2, 'news', 'double', '[]', now(), now())"
        )
        cur.execute("SELECT setval('lists_id_seq', 2)")
        t = time.perf_counter()
        with cur.copy(
            "COPY memberships (contact_id, list_id, status, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(1, n + 1):
                copy.write_row((i, 1, "confirmed", "2026-01-01", "2026-01-01"))
                if i % 5 < 3:
                    status = ("confirmed", "confirmed", "confirmed", "unconfirmed",
                              "unsubscribed")[i % 7 % 5]  # fmt: skip
                    copy.write_row((i, 2, status, "2026-01-01", "2026-01-01"))
        took["copy memberships"] = time.perf_counter() - t
        conn.commit()
        t = time.perf_counter()
        run_id = str(uuid.uuid4())
        cur.execute("INSERT INTO campaigns (id, name, created_at) VALUES (1, 'spring-sale', now())")
        cur.execute("SELECT setval('campaigns_id_seq', 1)")
        cur.execute(
            "INSERT INTO runs (id, campaign_id, status, dry_run, spec, recipients, columns,"
            " created_at) VALUES (%s, 1, 'completed', false, '{}', 0, '[]', now())",
            (run_id,),
        )
        cur.execute(
            "INSERT INTO deliveries (run_id, row_no, address, address_key, fields, status,"
            " attempts, created_at, updated_at, sent_at)"
            " SELECT %s, id, address, address_key, '{}', 'sent', 1, now(), now(),"
            " now() - (id %% 90) * interval '1 day' FROM contacts WHERE id %% 3 = 0",
            (run_id,),
        )
        cur.execute(
            "INSERT INTO events (delivery_id, run_id, kind, detail, occurred_at, created_at)"
            " SELECT id, run_id, 'open', '{}', now() - (id %% 60) * interval '1 day', now()"
            " FROM deliveries WHERE run_id = %s AND id %% 3 = 0",
            (run_id,),
        )
        cur.execute(
            "INSERT INTO events (delivery_id, run_id, kind, detail, occurred_at, created_at)"
            " SELECT id, run_id, 'click', '{}', now() - (id %% 300) * interval '1 day', now()"
            " FROM deliveries WHERE run_id = %s AND id %% 10 = 0",
            (run_id,),
        )
        conn.commit()
        took["deliveries and events"] = time.perf_counter() - t
        conn.autocommit = True
        t = time.perf_counter()
        cur.execute("VACUUM ANALYZE")
        took["vacuum analyze"] = time.perf_counter() - t
    return took


def time_counts(url: str, repeat: int) -> dict[str, dict[str, Any]]:
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import segments

    engine = Ledger(url).engine
    found: dict[str, dict[str, Any]] = {}
    for label, expression in SEGMENTS.items():
        first = segments.count(engine, expression=expression)  # warm-up (caches, plan)
        times = [segments.count(engine, expression=expression).seconds for _ in range(repeat)]
        found[label] = {
            "expression": expression,
            "contacts": first.contacts,
            "enabled": first.enabled,
            "seconds": statistics.median(times),
            "runs": [round(s, 3) for s in times],
        }
    engine.dispose()
    return found


def time_plan(url: str) -> dict[str, Any]:
    from mailcast.recipients.prepare import prepare_run
    from mailcast.spec import spec_from_dict
    from mailcast.transport.factory import Target

    folder = tempfile.mkdtemp(prefix="mailcast-bench-plan-")
    spec = spec_from_dict(
        {"name": "bench-list", "sender": "News <news@acme.example>", "subject": "Hi {{ name }}",
         "text": "Hello {{ city }}", "recipients": {"list": "all", "name_column": "name"}},
        base_dir=folder,
    )  # fmt: skip
    t = time.perf_counter()
    planned = prepare_run(url, spec, Target(outbox=folder))  # plan only: nothing is sent
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "rows": planned.rows, "outcomes": planned.outcomes}


def measure(pg: str, *, n: int, repeat: int) -> dict[str, Any]:
    name = f"mailcast_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg.rsplit("/", 1)[0] + "/" + name
    try:
        loaded = load(url, n)
        counts = time_counts(url, repeat)
        plan = time_plan(url)
    finally:
        from mailcast.ledger import schema

        for key, engine in list(schema._engines.items()):
            if name in key:
                engine.dispose()
                del schema._engines[key]
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {"contacts": n, "load": loaded, "counts": counts, "plan": plan,
            "seconds": max(c["seconds"] for c in counts.values())}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    result = measure(args.pg, n=args.n, repeat=args.repeat)
    print(f"segments over {args.n:,} contacts (Postgres), median of {args.repeat}")
    for step, secs in result["load"].items():
        print(f"  load: {step:24} {secs:7.1f} s")
    for label, c in result["counts"].items():
        verdict = "met" if c["seconds"] < 1 else "NOT met"
        print(f"  count {label:32} {c['contacts']:>9,} contacts {c['seconds'] * 1000:8.0f} ms"
              f"  (target < 1 s: {verdict})")  # fmt: skip
    p = result["plan"]
    verdict = "met" if p["seconds"] < 30 else "NOT met"
    print(f"  plan a campaign to list 'all': {p['rows']:,} rows in {p['seconds']:.1f} s "
          f"({p['outcomes']}; target < 30 s: {verdict})")  # fmt: skip


if __name__ == "__main__":
    main()
