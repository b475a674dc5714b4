"""Pacing: a smooth per-run rate limit (one message every 1/rate seconds, no burst)."""

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
    its rate. A sender that falls behind never catches up in a burst: a slot is never earlier
    than now.
    """

    def __init__(self, rate: float, shared: str | os.PathLike[str] | None = None) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()
        self._fd: int | None = None
        if shared is not None and fcntl is not None:
            self._fd = os.open(shared, os.O_RDWR | os.O_CREAT, 0o600)

    def _reserve(self, now: float) -> float:
        if self._fd is None or fcntl is None:
            slot = max(self._next, now)
            self._next = slot + self.interval
            return slot
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, 8, 0)
            after = struct.unpack("=d", raw)[0] if len(raw) == 8 else 0.0
            slot = max(after, now)
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
