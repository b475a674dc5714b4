"""The tracking service's event queue: opens and clicks are queued in memory when the request
is answered and written to the ledger in batches by one thread per process.

* The thread writes what is queued every ``interval`` seconds (0.5 s by default), sooner when a
  full batch is waiting; each batch is one call of ``write`` (the ledger's
  :func:`mailcast.ledger.events.record_event_batch`: a multi-row INSERT).
* When ``write`` fails because the database cannot be reached (:func:`transient`), the batch is
  kept and tried again, waiting 0.5 s, then 1 s, 2 s … up to 5 s between tries; new events queue
  behind it. Any other failure is logged and the batch is written event by event (``write_one``)
  so that one bad event cannot hold up the others: an event that still fails is logged and
  dropped (what the service did before the queue).
* At most ``limit`` events are held (queued and kept for a retry). Past that, new events are
  not recorded: :meth:`EventWriter.put` returns False, the pixel and the redirect still answer,
  and a warning with the count is logged (at most every 10 s).
* :meth:`EventWriter.close` (the service's graceful stop) writes everything queued before it
  returns, trying for up to ``drain_seconds`` when the database is down; what is left after that
  is logged as lost. A process killed outright (SIGKILL, a power cut) loses what was queued: at
  most the last ``interval`` plus the batch being written.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from mailcast.ledger.models import utcnow

log = logging.getLogger("mailcast.engagement")

# (delivery_id, kind, detail, occurred_at): what record_event_batch writes
Pending = tuple[int, str, dict[str, Any] | None, datetime]

INTERVAL = 0.5
BATCH = 5000
LIMIT = 200_000
RETRY_MAX = 5.0
DRAIN_SECONDS = 30.0


def transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed later as it is: the database is unreachable, restarting,
    locked or out of connections (not a statement it refuses)."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (sa.OperationalError, sa.InterfaceError, sa.TimeoutError, OSError))


class EventWriter:
    """An in-memory queue of events and the thread that writes them in batches.

    :meth:`put` is called from the event loop and never blocks on the database."""

    def __init__(
        self,
        write: Callable[[Sequence[Pending]], int],
        write_one: Callable[[Pending], Any] | None = None,
        *,
        interval: float = INTERVAL,
        batch: int = BATCH,
        limit: int = LIMIT,
        retry_max: float = RETRY_MAX,
        drain_seconds: float = DRAIN_SECONDS,
    ) -> None:
        self._write = write
        self._write_one = write_one
        self.interval = interval
        self.batch = batch
        self.limit = limit
        self.retry_max = retry_max
        self.drain_seconds = drain_seconds
        self._queue: collections.deque[Pending] = collections.deque()
        self._retry: list[Pending] = []  # a batch whose write failed, tried again first
        self._inflight = 0  # the batch being written
        self._wake = threading.Event()
        self._stopping = False
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.written = 0
        self.dropped = 0  # refused: the queue was full
        self.failed = 0  # given up: a write error that was not transient, or lost at the stop
        self.retries = 0
        self._last_warning = 0.0

    # -- the request side -----------------------------------------------------------------------

    def pending(self) -> int:
        """Events held (queued, and kept for a retry)."""
        return len(self._queue) + len(self._retry) + self._inflight

    def put(self, delivery_id: int, kind: str, detail: dict[str, Any] | None) -> bool:
        """Queue an event (its time: now). False when it is not recorded: the queue is full."""
        if self.pending() >= self.limit:
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_warning >= 10:
                self._last_warning = now
                log.warning(
                    "the event queue is full (%s events: the database is unreachable or too slow):"
                    " %s events not recorded so far",
                    self.limit,
                    self.dropped,
                )
            return False
        self._queue.append((delivery_id, kind, detail, utcnow()))
        if self._thread is None:
            self.start()
        elif len(self._queue) >= self.batch:
            self._wake.set()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped after a refused write):
        True; False when events are still held after ``timeout`` (the database is down)."""
        if self._thread is None and self.pending():
            self.start()
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)
        return self.pending() == 0

    # -- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(target=self._run, name="mailcast-events", daemon=True)
            self._thread.start()
            atexit.register(self.close)  # a process that exits without a lifespan shutdown

    def close(self, timeout: float | None = None) -> int:
        """Stop the thread after writing everything queued (trying for up to ``drain_seconds``,
        or ``timeout``, when the database is down). Returns how many events were lost."""
        with self._start_lock:
            if self._closed:
                return 0
            self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        wait = self.drain_seconds if timeout is None else timeout
        self._drain_deadline = time.monotonic() + wait
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait + 10)
        else:  # never started: write here
            self._drain_until_deadline()
        lost = self.pending()
        if lost:
            self.failed += lost
            log.error("stopping with %s events that could not be written: lost", lost)
        return lost

    def _run(self) -> None:
        delay = self.interval
        while True:
            self._wake.wait(delay)
            self._wake.clear()
            if self._stopping:
                self._drain_until_deadline()
                return
            if self._write_all():
                delay = self.interval
            else:
                delay = min(max(delay * 2, self.interval), self.retry_max)

    def _drain_until_deadline(self) -> None:
        delay = min(self.interval, 0.5)
        while not self._write_all():
            if time.monotonic() + delay > self._drain_deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, self.retry_max)

    def _write_all(self) -> bool:
        """Write what is held, batch after batch. False when the database could not be reached
        (the batch is kept for the next try)."""
        while True:
            if self._retry:
                batch, self._retry = self._retry, []
            else:
                batch = []
                with contextlib.suppress(IndexError):
                    for _ in range(self.batch):
                        batch.append(self._queue.popleft())
            if not batch:
                return True
            self._inflight = len(batch)
            try:
                done = self._write(batch)
            except Exception as exc:
                if transient(exc):
                    self._retry = batch
                    self._inflight = 0
                    self.retries += 1
                    if self.retries == 1 or self.retries % 20 == 0:
                        log.warning(
                            "cannot write %s events (%s: %s); kept in memory (%s held), retrying",
                            len(batch),
                            type(exc).__name__,
                            str(exc).splitlines()[0] if str(exc) else "",
                            self.pending(),
                        )
                    return False
                log.exception("could not write a batch of %s events; writing them one by one",
                              len(batch))  # fmt: skip
                ok = self._one_by_one(batch)
                self._inflight = 0
                if not ok:
                    return False
            else:
                self._inflight = 0
                self.written += done
                if done < len(batch):
                    log.info("%s events not recorded: no such delivery", len(batch) - done)
                if self.retries:
                    log.info("the events are written again (after %s failed tries)", self.retries)
                    self.retries = 0

    def _one_by_one(self, batch: list[Pending]) -> bool:
        """Write a batch that failed event by event; an event that fails is logged and dropped.
        False when the database became unreachable (the rest is kept for a retry)."""
        for i, item in enumerate(batch):
            try:
                if self._write_one is None:
                    raise RuntimeError("no single-event writer")
                self._write_one(item)
                self.written += 1
            except Exception as exc:
                if transient(exc):
                    self._retry = batch[i:]
                    self.retries += 1
                    return False
                self.failed += 1
                log.exception("could not record the %s event of delivery %s", item[1], item[0])
        return True
