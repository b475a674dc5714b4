"""Ingest + validate + dedupe of N CSV rows (target: 1,000,000 in under 60 s), with the
per-row reasons kept. Baseline in the same run: reading the same file with the stdlib csv module
and nothing else (the floor any ingest pays).

    python -m bench.ingest [-n 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from bench.scenarios import peak_rss_mb, write_recipients
from mailcast.spec import RecipientSource
from tasks.dedupe import dedupe_recipients
from tasks.ingest import read_recipients
from tasks.validate import validate_recipients


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "recipients.csv"
        write_recipients(path, args.n)
        floors, times = [], []
        rejected = 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            with path.open(newline="", encoding="utf-8") as fh:
                for _row in csv.reader(fh):
                    pass
            floors.append(time.perf_counter() - t)
            t = time.perf_counter()
            table = read_recipients(RecipientSource(path=str(path)), d)
            table = dedupe_recipients(validate_recipients(table))
            times.append(time.perf_counter() - t)
            rejected = len(table.rejected)
            del table
        med, floor = statistics.median(times), statistics.median(floors)
        print(f"ingest + validate + dedupe of {args.n:,} CSV rows, median of {args.repeat}")
        print(f"  csv.reader only (floor): {floor:6.1f} s")
        print(
            f"  mailcast:                {med:6.1f} s  ({med / floor:.1f}× the floor; "
            f"{args.n / med:,.0f} rows/s; {rejected:,} rejected with reasons)"
        )
        print(
            f"  target < 60 s: {'met' if med < 60 else 'NOT met'}; peak RSS {peak_rss_mb():,.0f} MB"
        )


if __name__ == "__main__":
    main()
