"""Pacing: a smooth per-run rate limit (one message every 1/rate seconds, a small bounded
catch-up, no burst-then-sleep)."""

from __future__ import annotations

import os
import struct
import threading
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: each process paces on its own
    fcntl = None  # type: ignore[assignment]


class Pacer:
    """A smooth rate limiter: one message every 1/rate seconds, no burst-then-sleep.

    Shared by the threads of one process; with ``shared`` (a file path), by every process on
    this machine that opens the same file: the next free slot lives in that file (guarded by
    ``flock``), on the system-wide monotonic clock, so a run's worker processes together keep
    its rate. A sender that falls behind (a busy machine, a new connection, a chunk change)
    may catch up by at most ``slack`` messages sent back to back (a tenth of a second's worth,
    at least 2; none at the start), so the rate holds over a window while no second is far
    from it; lag beyond that is dropped, never repaid in a burst.
    """

    def __init__(self, rate: float, shared: str | os.PathLike[str] | None = None) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.slack = max(2.0, rate / 10.0) * self.interval  # seconds of lag that may be repaid
        self._next: float | None = None  # the first message starts the clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        if shared is not None and fcntl is not None:
            self._fd = os.open(shared, os.O_RDWR | os.O_CREAT, 0o600)

    def _reserve(self, now: float) -> float:
        if self._fd is None or fcntl is None:
            slot = now if self._next is None else max(self._next, now - self.slack)
            self._next = slot + self.interval
            return slot
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, 8, 0)
            # a new slot file: the first message starts the clock (no catch-up from zero)
            after = struct.unpack("=d", raw)[0] if len(raw) == 8 else now
            slot = max(after, now - self.slack)
            os.pwrite(self._fd, struct.pack("=d", slot + self.interval), 0)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return slot

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = self._reserve(now)
        delay = slot - now
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
