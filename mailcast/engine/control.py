"""What the connections of one run share (in one process): the "slow down" gate, the retry
time budget, the count of recipients that failed in a row, and the stop flag."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

from mailcast.errors import SMTP_THROTTLE_CODES, AuthError, MailcastError, RunStopped, TlsError
from mailcast.spec import CampaignSpec

log = logging.getLogger("mailcast.send")

THROTTLE_CODES = SMTP_THROTTLE_CODES  # "slow down": the whole run backs off
BOUNCE_WINDOW = 1000  # the hard-bounce rate is over a process's last 1,000 attempts …
BOUNCE_SAMPLE = 200  # … judged once it made this many
COMPLAINT_SAMPLE = 1000  # the complaint rate is judged once this many were sent
COMPLAINT_EVERY = 30.0  # seconds between two looks at the run's complaints
MAX_BACKOFF_DOUBLINGS = 6  # a backoff grows to at most 64 × the base


def backoff(attempt: int, base: float) -> float:
    """Exponential backoff with jitter (attempt 1 → base/2..base, 2 → base..2·base, ...),
    capped at 64 × base."""
    doublings = min(max(attempt - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return base * (2**doublings) * (0.5 + random.random() / 2)


def short(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunControl:
    """What the threads of one run (in one process) share: the "slow down" gate, the retry time
    budget, the count of recipients that failed in a row, and the stop flag. Thread-safe."""

    def __init__(
        self,
        *,
        retry_base: float = 1.0,
        max_retry_seconds: float = 600.0,
        pause_after_failures: int = 50,
        max_hard_bounce_rate: float = 0.0,
        max_complaint_rate: float = 0.0,
    ) -> None:
        self.retry_base = retry_base
        self.max_retry_seconds = max_retry_seconds
        self.pause_after_failures = pause_after_failures
        self.max_hard_bounce_rate = max_hard_bounce_rate
        self.max_complaint_rate = max_complaint_rate
        self._attempts: deque[bool] = deque(maxlen=BOUNCE_WINDOW)  # True: a hard bounce
        self._bounces = 0  # hard bounces in ``_attempts``
        # (complaints, sent) of the run, from the ledger: set by the chunk that sends
        self.complaint_counts: Callable[[], tuple[int, int]] | None = None
        self._complaints_looked = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_error: MailcastError | None = None
        self._not_before = 0.0  # monotonic time before which no thread starts a message
        self._level = 0  # throttling replies in a row (eases off by one per accepted message)
        self.throttled = 0  # how often the server said "slow down" during the run
        self._consecutive = 0  # recipients in a row that ended failed
        self._waiting = 0  # threads waiting right now
        self._wait_started = 0.0
        self._waited = 0.0  # wall-clock seconds during which at least one thread waited

    @classmethod
    def for_spec(cls, spec: CampaignSpec) -> RunControl:
        return cls(
            retry_base=spec.retry_base_seconds,
            max_retry_seconds=spec.max_retry_seconds,
            pause_after_failures=spec.pause_after_failures,
            max_hard_bounce_rate=spec.max_hard_bounce_rate,
            max_complaint_rate=spec.max_complaint_rate,
        )

    # -- stopping ------------------------------------------------------------------------------

    @property
    def stopped(self) -> MailcastError | None:
        return self._stop_error

    def stop(self, error: RunStopped | AuthError | TlsError) -> None:
        """Stop every thread of the run before its next message; the first reason wins."""
        with self._lock:
            if self._stop_error is None:
                self._stop_error = error
                log.warning("stopping the run: %s", error)
            self._stop.set()

    def give_up(self, what: str, error: MailcastError, hint: str) -> NoReturn:
        """The run's retry time is used up waiting for ``what`` (the SMTP server, the ledger):
        stop every thread of the run and raise the RunStopped that says so."""
        self.stop(
            RunStopped(
                f"{what}; the run's retry time ({self.max_retry_seconds:g}s) is used up:"
                f" {error.message}",
                where=error.where,
                hint=hint,
            )
        )
        self.check()
        raise AssertionError("unreachable: the run was stopped")  # pragma: no cover

    def check(self) -> None:
        """If the run was stopped, raise (in this thread) an error like the one that stopped
        it: RunStopped, or the AuthError/TlsError that another connection ran into."""
        error = self._stop_error
        if error is not None:
            raise type(error)(error.message, where=error.where, hint=error.hint)

    # -- consecutive failures --------------------------------------------------------------------

    def succeeded(self, run_id: str = "") -> None:
        with self._lock:
            self._consecutive = 0
            if self._level:
                self._level -= 1
        self.attempted(hard_bounce=False, run_id=run_id)

    # -- the sender's reputation: hard-bounce and complaint rates ---------------------------------

    def attempted(self, *, hard_bounce: bool, where: str | None = None, run_id: str = "") -> None:
        """A message ended accepted or refused for good; pause the run when the hard bounces
        of this process's last 1,000 attempts, or the run's complaints, pass their limits."""
        with self._lock:
            if len(self._attempts) == self._attempts.maxlen:
                self._bounces -= self._attempts[0]
            self._attempts.append(hard_bounce)
            self._bounces += hard_bounce
            n, bounced = len(self._attempts), self._bounces
            look = (
                self.complaint_counts is not None
                and self.max_complaint_rate > 0
                and time.monotonic() - self._complaints_looked >= COMPLAINT_EVERY
            )
            if look:
                self._complaints_looked = time.monotonic()
        limit = self.max_hard_bounce_rate
        if limit and n >= BOUNCE_SAMPLE and bounced > limit * n:
            self.stop(
                RunStopped(
                    f"the run paused itself: hard bounces were {bounced / n:.1%} of the last"
                    f" {n:,} attempts (max_hard_bounce_rate {limit:.1%})",
                    where=where,
                    hint="a list that bounces this much harms the sender's reputation: check"
                    f" the addresses (`mailcast report {run_id}` lists the bounces), then"
                    f" `mailcast resume {run_id}` (or raise max_hard_bounce_rate)",
                )
            )
        if look and self.complaint_counts is not None:
            self._look_at_complaints(where, run_id)

    def _look_at_complaints(self, where: str | None, run_id: str) -> None:
        assert self.complaint_counts is not None
        try:
            complaints, sent = self.complaint_counts()
        except MailcastError:  # the ledger is away: the send loop deals with that
            return
        limit = self.max_complaint_rate
        if sent >= COMPLAINT_SAMPLE and complaints > limit * sent:
            self.stop(
                RunStopped(
                    f"the run paused itself: {complaints:,} spam complaints for {sent:,} messages"
                    f" sent ({complaints / sent:.2%}; max_complaint_rate {limit:.2%})",
                    where=where,
                    hint="find out why recipients complain (consent, content, frequency) before"
                    f" `mailcast resume {run_id}`",
                )
            )

    def failed(self, reason: str, where: str | None, run_id: str) -> None:
        """A recipient ended failed; after ``pause_after_failures`` in a row, stop the run."""
        with self._lock:
            self._consecutive += 1
            n = self._consecutive
        if self.pause_after_failures and n >= self.pause_after_failures:
            self.stop(
                RunStopped(
                    f"the run paused itself after {n} recipients in a row failed"
                    f" (the last: {short(reason, 200)})",
                    where=where,
                    hint=f"check the server's replies and the recipients, then `mailcast resume"
                    f" {run_id}` (only rows not yet sent are sent)",
                )
            )

    # -- the "slow down" gate ----------------------------------------------------------------------

    def throttle(self, why: str) -> float:
        """The server asked to slow down: hold back every thread of the run."""
        with self._lock:
            self.throttled += 1
            self._level += 1
            delay = backoff(self._level, self.retry_base)
            self._not_before = max(self._not_before, time.monotonic() + delay)
        log.info("server says slow down (%s): the run waits %.1fs", why, delay)
        return delay

    def gate(self) -> None:
        """Wait until the gate opens (or the run is stopped)."""
        while True:
            self.check()
            delay = self._not_before - time.monotonic()
            if delay <= 0:
                return
            self.sleep(delay)

    # -- waiting, and the retry time budget -------------------------------------------------------

    @contextmanager
    def _waiting_now(self) -> Iterator[None]:
        with self._lock:
            if self._waiting == 0:
                self._wait_started = time.monotonic()
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1
                if self._waiting == 0:
                    self._waited += time.monotonic() - self._wait_started

    def waited(self) -> float:
        """Wall-clock seconds the run spent with at least one thread waiting to retry."""
        with self._lock:
            ongoing = time.monotonic() - self._wait_started if self._waiting else 0.0
            return self._waited + ongoing

    def retry_time_left(self) -> float:
        return self.max_retry_seconds - self.waited()

    def sleep(self, seconds: float) -> None:
        """Wait (counted against the retry time budget); a stop wakes every sleeper."""
        if seconds <= 0:
            return
        with self._waiting_now():
            self._stop.wait(seconds)
