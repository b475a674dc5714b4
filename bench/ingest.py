"""Ingest + validate + dedupe of N CSV rows (target: 1,000,000 in under 60 s), with the
per-row reasons kept. Baseline in the same run: reading the same file with the stdlib csv module
and nothing else (the floor any ingest pays).

    python -m bench.ingest [-n 1000000] [--repeat 3]

(``python -m bench --only ingest`` runs the same measurement, each repetition in its own process.)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.scenarios import peak_rss_mb, write_recipients


def measure(path: Path) -> dict[str, Any]:
    """One measurement on the CSV at ``path``: the csv.reader floor, then mailcast's ingest +
    validate + dedupe (``seconds``), with the number of rows and of rows rejected with a reason."""
    from mailcast.recipients.dedupe import dedupe_recipients
    from mailcast.recipients.sources import read_recipients
    from mailcast.recipients.validate import validate_recipients
    from mailcast.spec import RecipientSource

    t = time.perf_counter()
    with path.open(newline="", encoding="utf-8") as fh:
        for _row in csv.reader(fh):
            pass
    floor = time.perf_counter() - t
    t = time.perf_counter()
    table = read_recipients(RecipientSource(path=str(path)), path.parent)
    table = dedupe_recipients(validate_recipients(table))
    seconds = time.perf_counter() - t
    return {
        "rows": len(table.rows),
        "seconds": seconds,
        "floor_seconds": floor,
        "rejected": len(table.rejected),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipients.csv"
        write_recipients(path, args.n)
        runs = [measure(path) for _ in range(args.repeat)]
    med = statistics.median(r["seconds"] for r in runs)
    floor = statistics.median(r["floor_seconds"] for r in runs)
    rejected = runs[0]["rejected"]
    print(f"ingest + validate + dedupe of {args.n:,} CSV rows, median of {args.repeat}")
    print(f"  csv.reader only (floor): {floor:6.1f} s")
    print(
        f"  mailcast:                {med:6.1f} s  ({med / floor:.1f}× the floor; "
        f"{args.n / med:,.0f} rows/s; {rejected:,} rejected with reasons)"
    )
    print(f"  target < 60 s: {'met' if med < 60 else 'NOT met'}; peak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
