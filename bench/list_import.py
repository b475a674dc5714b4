"""Importing contacts into a list in Postgres (``mailcast lists import``: COPY into a staging
table, then set-based upserts) against row-by-row statements, measured in the same run.

    python -m bench.list_import [-n 1000000] [--baseline-rows 20000]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

The data: ``bench.scenarios.write_recipients`` (email, first_name, last_name, city; ~2 % invalid
addresses, ~1 % duplicates), so every import also validates, dedupes and reports. Measured:
the first import of N rows into an empty ledger (all new: contacts, memberships, consent
records), then the same import again (idempotent: nothing changes). Baseline: the same rows
validated the same way, then per row a SELECT of the contact, an INSERT of the contact, of the
membership and of the consent record (one transaction), on ``--baseline-rows`` rows, its rate
extrapolated to N. Target: 1,000,000 rows in under 60 s.
(``python -m bench --only list-import`` runs the same measurement in its own process.)
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text

from bench.scenarios import ensure_recipients


def row_by_row(url: str, path: Path, list_name: str) -> float:
    """Seconds to import ``path`` into the list one statement at a time."""
    from mailcast.ledger.audiences import CR, CT, LT, MT
    from mailcast.ledger.models import utcnow
    from mailcast.ledger.store import Ledger
    from mailcast.recipients.sources import open_recipients
    from mailcast.recipients.validate import RowChecker
    from mailcast.spec import RecipientSource

    engine = Ledger(url).engine
    t = time.perf_counter()
    with engine.begin() as conn, open_recipients(RecipientSource(path=str(path)), ".") as rows:
        list_id = conn.execute(select(LT.c.id).where(LT.c.name == list_name)).scalar_one()
        check = RowChecker(rows.columns)
        seen: set[str] = set()
        for r in rows:
            check(r)
            if r.reason is not None or r.key in seen:
                continue
            assert r.key is not None
            seen.add(r.key)
            now = utcnow()
            found = conn.execute(select(CT.c.id).where(CT.c.address_key == r.key)).scalar()
            if found is None:
                attributes = {k: v for k, v in r.fields.items() if k != "email" and v}
                found = conn.execute(
                    insert(CT)
                    .values(address=r.address, address_key=r.key, name=None,
                            attributes=attributes, status="enabled", created_at=now,
                            updated_at=now)
                    .returning(CT.c.id)
                ).scalar_one()  # fmt: skip
            conn.execute(
                insert(MT).values(contact_id=found, list_id=list_id, status="confirmed",
                                  created_at=now, updated_at=now)
            )  # fmt: skip
            conn.execute(
                insert(CR).values(contact_id=found, list_id=list_id, action="subscribe",
                                  method="import", source=f"import {path}", at=now)
            )  # fmt: skip
    return time.perf_counter() - t


@contextlib.contextmanager
def fresh_database(pg: str) -> Iterator[str]:
    name = f"mailcast_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg.rsplit("/", 1)[0] + "/" + name
    finally:
        from mailcast.ledger import schema

        for key, engine in list(schema._engines.items()):
            if name in key:
                engine.dispose()
                del schema._engines[key]
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure(pg: str, *, rows: int, baseline_rows: int, workdir: Path) -> dict[str, Any]:
    """The import of ``rows`` rows (first, then again), and row-by-row statements on
    ``baseline_rows`` rows, each in a fresh database (dropped after)."""
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import lists
    from mailcast.recipients.list_import import import_list
    from mailcast.spec import RecipientSource

    big = ensure_recipients(workdir / "data" / f"recipients-{rows}.csv", rows)
    small = ensure_recipients(workdir / "data" / f"recipients-{baseline_rows}.csv", baseline_rows)
    with fresh_database(pg) as url:
        lists.create_list(Ledger(url), "baseline")
        base_seconds = row_by_row(url, small, "baseline")
    with fresh_database(pg) as url:
        ledger = Ledger(url)
        lists.create_list(ledger, "bench")
        first = import_list(ledger, "bench", RecipientSource(path=str(big)))
        again = import_list(ledger, "bench", RecipientSource(path=str(big)))
    return {
        "rows": rows,
        "seconds": first.seconds,
        "new": first.new,
        "joined": first.joined,
        "reported": len(first.rows),
        "again_seconds": again.seconds,
        "again_new": again.new,
        "again_changed": again.changed,
        "again_joined": again.joined,
        "baseline_rows": baseline_rows,
        "baseline_seconds": base_seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        r = measure(args.pg, rows=args.n, baseline_rows=args.baseline_rows, workdir=Path(d))
    base_rate = r["baseline_rows"] / r["baseline_seconds"]
    rate = r["rows"] / r["seconds"]
    print(f"list import into Postgres: {r['rows']:,} rows in {r['seconds']:.1f} s "
          f"({rate:,.0f} rows/s; {r['new']:,} new, {r['reported']:,} reported); "
          f"target < 60 s per 1M: {'met' if r['seconds'] < 60 * r['rows'] / 1e6 else 'NOT met'}")  # fmt: skip
    print(f"again (idempotent): {r['again_seconds']:.1f} s, {r['again_new']} new, "
          f"{r['again_changed']} changed, {r['again_joined']} joined")  # fmt: skip
    print(f"row-by-row: {base_rate:,.0f} rows/s on {r['baseline_rows']:,} rows "
          f"(~{r['rows'] / base_rate:,.0f} s for {r['rows']:,}); import {rate / base_rate:.1f}×")  # fmt: skip


if __name__ == "__main__":
    main()
