"""Receiving ends that ``smtp-sink`` cannot be, built on mailcast's capturing server (aiosmtpd):

* ``slow``: every message takes ``--delay`` seconds (the reply to the end of DATA is held back;
  ``smtp-sink`` delays only in whole seconds);
* ``timestamps``: records the time each message arrived, one line per message in ``--log``
  (the rate-limit scenario reads the per-second counts from it).

Each runs in its own process, so its CPU and memory are not the sender's::

    python -m bench.servers slow --delay 0.5
    python -m bench.servers timestamps --log FILE

It prints ``ready PORT`` once listening and stops on SIGTERM. Messages are counted, not kept.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from aiosmtpd.smtp import Envelope, Session

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP


class BenchHandler(CaptureHandler):
    """Accepts every message after ``server.delay`` seconds; logs its arrival time if asked."""

    server: BenchServer

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        arrived = time.time()
        if self.server.delay:
            await asyncio.sleep(self.server.delay)
        smtp.accepted += 1
        seq = self.server.count(arrived)
        return f"250 2.0.0 Ok: queued as {seq:08X}"


class BenchServer(CaptureServer):
    handler_class = BenchHandler

    def __init__(self, *, delay: float = 0.0, log: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay = delay
        self.accepted = 0
        self._count_lock = threading.Lock()
        self._log: IO[str] | None = log.open("a", buffering=1) if log is not None else None

    def count(self, arrived: float) -> int:
        with self._count_lock:
            self.accepted += 1
            if self._log is not None:
                self._log.write(f"{arrived:.6f}\n")
            return self.accepted

    def stop(self) -> None:
        super().stop()
        if self._log is not None:
            self._log.close()
            self._log = None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["slow", "timestamps"])
    ap.add_argument("--delay", type=float, default=0.5)
    ap.add_argument("--log", type=Path)
    args = ap.parse_args()
    delay = args.delay if args.kind == "slow" else 0.0
    server = BenchServer(delay=delay, log=args.log, idle_timeout=600)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with server:
        print(f"ready {server.port}", flush=True)
        done.wait()
        print(f"accepted {server.accepted}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
