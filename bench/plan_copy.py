"""Planning a run into Postgres: COPY (what `Ledger.plan` does) against row-by-row INSERTs and
SQLAlchemy executemany, measured in the same run.

    python -m bench.plan_copy [--rows 1000000] [--baseline-rows 20000] [--repeat 3]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Prints rows/s for each method, the ratio of COPY to the row-by-row baseline (medians), and the
wall time to plan --rows recipients with COPY (target: under 30 s for 1,000,000).
(``python -m bench --only plan-copy`` runs the same measurement, each repetition in its own
process.)
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

from sqlalchemy import create_engine, insert, text

from mailcast.ledger.models import utcnow
from mailcast.ledger.store import PLAN_COLUMNS, D, Ledger, _delivery_rows
from mailcast.recipients import Recipient


def recipients(n: int) -> list[Recipient]:
    return [
        Recipient(
            row=i + 2,
            address=f"user{i}@example.com",
            fields={"email": f"user{i}@example.com", "first_name": f"First{i}", "city": "Zürich"},
            reason=None if i % 50 else "invalid address: test",
            key=f"user{i}@example.com",
        )
        for i in range(n)
    ]


def fresh_run(ledger: Ledger) -> str:
    return ledger.create_run("bench-plan", {}, dry_run=True, transport=None)


def time_copy(ledger: Ledger, rows: list[Recipient]) -> float:
    run_id = fresh_run(ledger)
    t = time.perf_counter()
    ledger.plan(run_id, rows)
    return time.perf_counter() - t


def _plan_rows(run_id: str, rows: list[Recipient], now: Any) -> list[dict[str, Any]]:
    """The delivery rows mailcast plans, as column → value (for plain INSERTs)."""
    return [
        dict(zip(PLAN_COLUMNS, values, strict=True)) for values in _delivery_rows(run_id, rows, now)
    ]


def time_row_by_row(ledger: Ledger, rows: list[Recipient]) -> float:
    run_id = fresh_run(ledger)
    t = time.perf_counter()
    with ledger.engine.begin() as conn:
        for row in _plan_rows(run_id, rows, utcnow()):
            conn.execute(insert(D).values(**row))
    return time.perf_counter() - t


def time_executemany(ledger: Ledger, rows: list[Recipient]) -> float:
    run_id = fresh_run(ledger)
    t = time.perf_counter()
    with ledger.engine.begin() as conn:
        conn.execute(insert(D), list(_plan_rows(run_id, rows, utcnow())))
    return time.perf_counter() - t


def measure(pg: str, *, rows: int, baseline_rows: int, repeat: int) -> dict[str, Any]:
    """Rates (rows/s, medians of ``repeat``) of each method on ``baseline_rows`` rows, and the
    median time to plan ``rows`` recipients with COPY; in a fresh database, dropped after."""
    name = f"mailcast_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg.rsplit("/", 1)[0] + "/" + name
    try:
        ledger = Ledger(url)
        small = recipients(baseline_rows)
        big = recipients(rows)
        rates: dict[str, list[float]] = {"row-by-row INSERT": [], "executemany": [], "COPY": []}
        big_times: list[float] = []
        for _ in range(repeat):
            rates["row-by-row INSERT"].append(len(small) / time_row_by_row(ledger, small))
            rates["executemany"].append(len(small) / time_executemany(ledger, small))
            rates["COPY"].append(len(small) / time_copy(ledger, small))
            big_times.append(time_copy(ledger, big))
        ledger.engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return {
        "rows": rows,
        "seconds": statistics.median(big_times),
        "baseline_rows": baseline_rows,
        "rates": {method: statistics.median(values) for method, values in rates.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    result = measure(args.pg, rows=args.rows, baseline_rows=args.baseline_rows, repeat=args.repeat)
    base = result["rates"]["row-by-row INSERT"]
    print(f"planning into Postgres, {args.baseline_rows:,} rows, median of {args.repeat}")
    print(f"{'method':22} {'rows/s':>12} {'× row-by-row':>14}")
    for method, med in result["rates"].items():
        print(f"{method:22} {med:12,.0f} {med / base:14.1f}")
    med_big = result["seconds"]
    print(
        f"COPY of {args.rows:,} recipients: median {med_big:.1f} s "
        f"({args.rows / med_big:,.0f} rows/s; target < 30 s: {'met' if med_big < 30 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
