"""The send engine: one chunk of a run's ledger rows over one reused connection.

It depends on two small interfaces: a ``Store`` (the ledger: claim rows, record outcomes) and a
``Transport`` (SMTP, or the outbox folder in a dry run), plus a ``compose`` callable that turns a
claimed row into (Message-ID, message bytes).

The loop, per batch: claim up to N pending rows (marked ``sending`` and committed *before* any
DATA is transmitted) → send each → record all outcomes in one statement, in the transaction of
the next claim (or on their own when there is none, or something went wrong). So after a crash only
the rows of the batch in flight are ``sending`` (they become ``unknown`` on resume); a row marked
``sent`` is never claimed again. The batch size adapts so a batch takes ~0.25 s: large on a fast
server, small on a slow one.

Replies: 2xx → sent. 5xx → failed (permanent; reason names the stage, code and text; a 5xx to
RCPT is recorded as ``hard bounce: <code> <text> (at RCPT)``). 4xx or a dropped connection →
pending again and retried after an exponential backoff with jitter, up to ``max_attempts``; then
failed with a reason starting "temporary" (``mailcast retry --failed`` picks those up).

What the threads of one run share (a :class:`RunControl`, one per run per process):

* a "slow down" gate: a 421/451/454 reply (or a "421 busy" greeting) holds back *every* thread of
  the run for a while that doubles with each throttling reply in a row and eases off with each
  message accepted;
* the retry time budget (``max_retry_seconds``): the wall-clock time the run spent waiting (for
  backoffs, the gate or an unreachable server). Once used up, a temporary failure is final
  ("temporary failure, not retried: ...") and an unreachable server stops the run;
* a stop flag: after ``pause_after_failures`` recipients in a row ended failed, or when the
  credentials or TLS fail, every thread stops before its next message, claimed-but-unsent rows go
  back to pending and the run ends ``paused`` (``mailcast resume`` continues it). AuthError and
  TlsError stop the run at once: nothing in flight is marked failed.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: each process paces on its own
    fcntl = None  # type: ignore[assignment]

from mailcast.errors import (
    AttachmentError,
    AuthError,
    ConnectError,
    ConnectionLost,
    MailcastError,
    RunStopped,
    SmtpReplyError,
    SourceError,
    SpecError,
    TemplateError,
    TlsError,
)
from mailcast.ledger.models import FAILED, PENDING, SENT, UNKNOWN
from mailcast.ledger.store import Claim, Outcome, Store
from mailcast.spec import CampaignSpec
from mailcast.transport.base import Reply, Transport
from mailcast.transport.target import Target
from tasks._prefect import task
from tasks.claim_group import ClaimGroup

log = logging.getLogger("mailcast.send")

Compose = Callable[[Claim], tuple[str, bytes]]

TARGET_BATCH_SECONDS = 0.1
MAX_BATCH = 50
THROTTLE_CODES = frozenset({421, 451, 454})  # "slow down": the whole run backs off
MAX_BACKOFF_DOUBLINGS = 6  # a backoff grows to at most 64 × the base


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


def _backoff(attempt: int, base: float) -> float:
    """Exponential backoff with jitter (attempt 1 → base/2..base, 2 → base..2·base, ...),
    capped at 64 × base."""
    doublings = min(max(attempt - 1, 0), MAX_BACKOFF_DOUBLINGS)
    return base * (2**doublings) * (0.5 + random.random() / 2)


class RunControl:
    """What the threads of one run (in one process) share: the "slow down" gate, the retry time
    budget, the count of recipients that failed in a row, and the stop flag. Thread-safe."""

    def __init__(
        self,
        *,
        retry_base: float = 1.0,
        max_retry_seconds: float = 600.0,
        pause_after_failures: int = 50,
    ) -> None:
        self.retry_base = retry_base
        self.max_retry_seconds = max_retry_seconds
        self.pause_after_failures = pause_after_failures
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

    def check(self) -> None:
        """If the run was stopped, raise (in this thread) an error like the one that stopped
        it: RunStopped, or the AuthError/TlsError that another connection ran into."""
        error = self._stop_error
        if error is not None:
            raise type(error)(error.message, where=error.where, hint=error.hint)

    # -- consecutive failures --------------------------------------------------------------------

    def succeeded(self) -> None:
        with self._lock:
            self._consecutive = 0
            if self._level:
                self._level -= 1

    def failed(self, reason: str, where: str | None, run_id: str) -> None:
        """A recipient ended failed; after ``pause_after_failures`` in a row, stop the run."""
        with self._lock:
            self._consecutive += 1
            n = self._consecutive
        if self.pause_after_failures and n >= self.pause_after_failures:
            self.stop(
                RunStopped(
                    f"the run paused itself after {n} recipients in a row failed"
                    f" (the last: {_short(reason, 200)})",
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
            delay = _backoff(self._level, self.retry_base)
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


@dataclass
class ChunkResult:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, other: ChunkResult) -> None:
        self.sent += other.sent
        self.failed += other.failed
        self.retried += other.retried
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v

    def count(self, key: str) -> None:
        self.reasons[key] = self.reasons.get(key, 0) + 1


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def envelope_address(address: str) -> str:
    """The address to send to: an internationalized domain as its ASCII (IDNA) form when the
    local part is ASCII, so the message needs no SMTPUTF8. A non-ASCII local part is kept (it
    needs SMTPUTF8, which the transport asks for, or refuses the row when not offered)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii() or not local.isascii():
        return address
    import idna

    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except (idna.IDNAError, UnicodeError):
        return address


class ChunkWork:
    """The rows of one chunk still to be sent, shared by the engine loops (one per connection)
    working on it: the pending row ids not yet claimed, in id order, and the rows waiting to be
    retried (row id → when). Each loop takes the next ids, claims those still pending (another
    process resuming the same run may have taken some) and sends them; a row that gets a 4xx
    waits here for its backoff, excluded from every loop's claims. Thread-safe."""

    def __init__(self, ids: Iterable[int]) -> None:
        self._ids = deque(ids)
        self._lock = threading.Lock()
        self._deferred: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def take(self, n: int) -> list[int]:
        with self._lock:
            ids = self._ids
            return [ids.popleft() for _ in range(min(n, len(ids)))]

    def defer(self, row_id: int, when: float) -> None:
        with self._lock:
            self._deferred[row_id] = when

    def due(self, now: float, *, everything: bool = False) -> list[int]:
        """Take the deferred rows whose retry time has come (all of them with ``everything``)."""
        with self._lock:
            ids = [i for i, t in self._deferred.items() if t <= now or everything]
            for i in ids:
                del self._deferred[i]
            return ids

    def next_due(self) -> float | None:
        with self._lock:
            return min(self._deferred.values()) if self._deferred else None


@dataclass
class _Chunk:
    """One engine loop (one connection) of ``send_chunk``: what its batches share."""

    store: Store
    transport: Transport
    compose: Compose
    sender: str
    run_id: str
    max_attempts: int
    control: RunControl
    pacer: Pacer | None
    work: ChunkWork
    sender_for: Callable[[Claim], str | None] | None = None
    result: ChunkResult = field(default_factory=ChunkResult)
    deferring: list[tuple[int, float]] = field(default_factory=list)  # this batch's retries
    unrecorded: list[Outcome] = field(default_factory=list)  # recorded with the next claim
    connect_failures: int = 0  # in a row
    on_connection: int = 0  # messages accepted on the current connection
    maybe_delivered: set[int] = field(default_factory=set)  # rows that lost a reply to DATA


def send_chunk(
    store: Store,
    transport: Transport,
    compose: Compose,
    sender: str,
    run_id: str,
    lo: int,
    hi: int,
    *,
    max_attempts: int = 3,
    retry_base: float = 1.0,
    pacer: Pacer | None = None,
    control: RunControl | None = None,
    sender_for: Callable[[Claim], str | None] | None = None,
    work: ChunkWork | None = None,
) -> ChunkResult:
    """Send every pending row of ``run_id`` with id in [lo, hi] over ``transport`` (one
    connection); return what happened. Several calls (threads, one connection each) may share
    one ``work`` (the chunk's rows, see :class:`ChunkWork`); without it the rows are listed here.
    ``sender_for`` gives a row's own envelope sender (a VERP return path), None for ``sender``.

    Raises RunStopped when the run stopped (this chunk's failures, or another thread's), and
    AuthError/TlsError when the server refuses the credentials or TLS (the run is stopped too).
    """
    if control is None:
        control = RunControl(retry_base=retry_base)
    if work is None:
        work = ChunkWork(store.pending_ids(run_id, lo, hi))
    chunk = _Chunk(
        store, transport, compose, sender, run_id, max_attempts, control, pacer, work, sender_for
    )
    batch_size = 10
    try:
        control.check()
        if not len(work) and work.next_due() is None:
            return chunk.result  # nothing left for this connection: do not connect
        _open(chunk)
        while True:
            control.check()
            ids = work.due(time.monotonic(), everything=control.retry_time_left() <= 0)
            if not ids:
                ids = work.take(batch_size)
            if not ids:
                _flush(chunk)
                when = work.next_due()
                if when is None:
                    break
                control.sleep(when - time.monotonic())
                continue
            # The previous batch's outcomes and this claim: one transaction.
            claims = store.claim_ids(run_id, ids, record=chunk.unrecorded)
            _recorded(chunk)
            if not claims:
                continue
            started = time.monotonic()
            _send_batch(chunk, claims)
            took = time.monotonic() - started
            per_msg = took / len(claims)
            batch_size = max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(per_msg, 1e-5))))
    except (AuthError, TlsError) as exc:
        # Every connection of the run would fail the same way: stop the others too (they
        # raise the same error before their next message).
        control.stop(exc)
        raise
    finally:
        try:
            _flush(chunk)  # the last batch's outcomes
        finally:
            transport.close()
    return chunk.result


def _open(chunk: _Chunk) -> None:
    """Connect (a no-op for an open transport), waiting while the server cannot be reached."""
    while True:
        try:
            chunk.transport.open()
            chunk.connect_failures = 0
            return
        except ConnectError as exc:
            _wait_for_server(chunk, exc)


def _wait_for_server(chunk: _Chunk, exc: ConnectError) -> None:
    """The server cannot be reached (down, or "421 busy"): back off and let the caller try
    again, until the run's retry time is used up; then stop the run."""
    control = chunk.control
    chunk.connect_failures += 1
    if control.retry_time_left() <= 0:
        control.stop(
            RunStopped(
                f"the SMTP server could not be reached; the run's retry time"
                f" ({control.max_retry_seconds:g}s) is used up: {exc.message}",
                where=exc.where,
                hint=f"check that the server is up and reachable, then `mailcast resume"
                f" {chunk.run_id}` (only rows not yet sent are sent)",
            )
        )
        control.check()
    if "refused the connection: 4" in exc.message:  # "421 busy": a slow-down too
        control.throttle(exc.message)
    delay = min(_backoff(chunk.connect_failures, control.retry_base), control.retry_time_left())
    log.info("cannot connect (%s); trying again in %.1fs", exc, delay)
    control.sleep(delay)
    control.check()


def _send_batch(chunk: _Chunk, claims: list[Claim]) -> None:
    control, result = chunk.control, chunk.result
    outcomes: list[Outcome] = []
    done: set[int] = set()
    in_flight: int | None = None
    unexpected: BaseException | None = None
    completed = False
    try:
        for claim in claims:
            control.check()
            try:
                message_id, data = chunk.compose(claim)
            except (TemplateError, AttachmentError, ValueError) as exc:
                # This recipient's message cannot be built (a template fails on its data, the
                # message is too large, an address unusable in a header): final for the row.
                kind = "template error" if isinstance(exc, TemplateError) else "cannot build"
                reason = f"{kind}: {exc}"
                outcomes.append(Outcome(claim.id, FAILED, reason=reason))
                done.add(claim.id)
                result.failed += 1
                result.count(kind)
                control.failed(reason, None, chunk.run_id)
                continue
            if chunk.pacer is not None:
                chunk.pacer.wait()
            control.gate()
            in_flight = claim.id
            try:
                mail_from = (chunk.sender_for(claim) if chunk.sender_for else None) or chunk.sender
                reply = _send_reconnecting(chunk, mail_from, envelope_address(claim.address), data)
            except SmtpReplyError as exc:
                in_flight = None
                outcome = _refused(chunk, claim, exc, message_id)
                outcomes.append(outcome)
                done.add(claim.id)
                continue
            in_flight = None
            outcomes.append(
                Outcome(
                    claim.id,
                    SENT,
                    smtp_code=reply.code,
                    smtp_reply=_short(reply.text),
                    message_id=message_id,
                )
            )
            done.add(claim.id)
            result.sent += 1
            control.succeeded()
        completed = True
    except (AuthError, TlsError, ConnectError, RunStopped):
        # Nothing of the message in flight was transmitted (we could not (re)connect, or the
        # run stopped before it): it goes back to pending with the rest.
        in_flight = None
        raise
    except BaseException as exc:
        unexpected = exc
        raise
    finally:
        # Rows never attempted go back to pending; the one in flight when something unexpected
        # struck mid-send may or may not have been delivered: it is recorded as unknown.
        rest = [
            Outcome(c.id, PENDING, reason=None)
            for c in claims
            if c.id not in done and c.id != in_flight
        ]
        if in_flight is not None:
            what = f"{type(unexpected).__name__}: {unexpected}" if unexpected else "interrupted"
            rest.append(
                Outcome(
                    in_flight,
                    UNKNOWN,
                    reason=f"unexpected error while sending ({_short(what, 200)}); may have"
                    " been delivered",
                )
            )
        chunk.unrecorded.extend(outcomes + rest)
        if not completed:
            _flush(chunk)


def _flush(chunk: _Chunk) -> None:
    """Record the outcomes not yet recorded (normally they go with the next claim, in one
    transaction)."""
    if chunk.unrecorded:
        chunk.store.record(chunk.unrecorded)
    _recorded(chunk)


def _recorded(chunk: _Chunk) -> None:
    """The outcomes are in the ledger: rows to retry become visible to every connection."""
    chunk.unrecorded = []
    for row_id, when in chunk.deferring:
        chunk.work.defer(row_id, when)
    chunk.deferring.clear()


def _send_reconnecting(chunk: _Chunk, sender: str, address: str, data: bytes) -> Reply:
    """Send; while the server cannot be reached, wait and try again (``_wait_for_server``).
    Nothing of a message is transmitted before the connection is up, so this never duplicates.

    A 421 to MAIL on a connection that already carried messages is most often a per-connection
    message limit ("too many messages, closing"): MAIL was refused, so nothing of the message
    was accepted, and it goes once more, at once, on a fresh connection (not an attempt, not a
    slow-down). A 421 there too is a refusal like any other."""
    fresh_try = False
    while True:
        try:
            reply = chunk.transport.send(sender, address, data)
        except ConnectError as exc:
            chunk.on_connection = 0
            _wait_for_server(chunk, exc)
            continue
        except SmtpReplyError as exc:
            reused = chunk.on_connection > 0
            if exc.code == 421 or isinstance(exc, ConnectionLost):
                chunk.on_connection = 0  # the transport closed the connection
            if exc.code == 421 and exc.stage == "MAIL" and reused and not fresh_try:
                log.debug("421 at MAIL after messages on the connection: %s; reconnecting", exc)
                fresh_try = True
                continue
            raise
        chunk.connect_failures = 0
        chunk.on_connection += 1
        return reply


def _refused(chunk: _Chunk, claim: Claim, exc: SmtpReplyError, message_id: str) -> Outcome:
    """The outcome of a refused message; also tells the run's control about it."""
    control, result = chunk.control, chunk.result
    code = exc.code or None
    text = _short(exc.text)
    reply = f"{exc.code} {text}" if exc.code else text
    if isinstance(exc, ConnectionLost) and exc.maybe_delivered:
        chunk.maybe_delivered.add(claim.id)
    if exc.code in THROTTLE_CODES:  # "slow down": the whole run backs off
        control.throttle(reply)
    final = exc.permanent or claim.attempts >= chunk.max_attempts
    if not final and control.retry_time_left() > 0:
        result.retried += 1
        # Shared with the chunk's other connections once the outcome is recorded (pending again):
        # a claim before that would find the row still `sending` and drop it.
        chunk.deferring.append(
            (claim.id, time.monotonic() + _backoff(claim.attempts, control.retry_base))
        )
        return Outcome(
            claim.id,
            PENDING,
            reason=f"temporary: {reply} (attempt {claim.attempts} of {chunk.max_attempts})",
            smtp_code=code,
            smtp_reply=text,
        )
    if exc.permanent and exc.stage == "RCPT":
        key, reason = "hard bounce", f"hard bounce: {reply} (at RCPT)"
    elif exc.permanent:
        stage = f" at {exc.stage}" if exc.stage else ""
        key, reason = f"rejected {exc.code}", f"rejected{stage}: {reply}"
    elif claim.attempts >= chunk.max_attempts:
        key = "temporary failure"
        reason = f"temporary failure after {claim.attempts} attempts: {reply}"
    else:
        key = "temporary failure"
        reason = (
            f"temporary failure, not retried: the run's retry time"
            f" ({control.max_retry_seconds:g}s) is used up (attempt {claim.attempts}): {reply}"
        )
    control.failed(reason, exc.where, chunk.run_id)
    status = FAILED
    if claim.id in chunk.maybe_delivered:
        # An attempt sent the whole message and lost the reply: the server may have it.
        status, key = UNKNOWN, "may have been delivered"
        reason = (
            "may have been delivered: the connection was lost after the whole message was sent"
            f" (no reply to DATA); then {reason}"
        )
    else:
        result.failed += 1
    result.count(key)
    return Outcome(
        claim.id, status, reason=reason, smtp_code=code, smtp_reply=text, message_id=message_id
    )


# Errors a retry of the chunk cannot fix: the run stopped itself, the credentials or TLS, or the
# campaign's own files.
NOT_RETRYABLE: tuple[type[BaseException], ...] = (
    AuthError,
    TlsError,
    RunStopped,
    SpecError,
    TemplateError,
    AttachmentError,
    SourceError,
)


def _is_retryable(task: object, task_run: object, state: object) -> bool:
    """Prefect retry condition: never retry a chunk that failed on credentials or TLS, that
    stopped with its run, or that cannot be built."""
    try:
        state.result()  # type: ignore[attr-defined]
    except NOT_RETRYABLE:
        return False
    except Exception:
        return True
    return True


# -- wiring one chunk of a run: the ledger, the campaign's templates and the transport ----------

_pacers: dict[tuple[str, str], Pacer] = {}
_pacers_lock = threading.Lock()
_controls: dict[tuple[str, str], RunControl] = {}


def pacer_path(run_id: str, attempt: str) -> Path:
    """The file through which the processes of one flow run (``attempt``) share the run's rate."""
    return Path(tempfile.gettempdir()) / f"mailcast-pace-{run_id}-{attempt}"


def run_pacer(run_id: str, rate: float | None, attempt: str = "") -> Pacer | None:
    """One pacer per run per process: the run's threads share its rate. Within a flow run
    (``attempt``: the flow run's id) the pacers of all its worker processes share one slot
    file, so the rate holds for the run as a whole."""
    if rate is None:
        return None
    with _pacers_lock:
        pacer = _pacers.get((run_id, attempt))
        if pacer is None or pacer.rate != rate:
            if pacer is not None:
                pacer.close()
            pacer = Pacer(rate, pacer_path(run_id, attempt) if attempt else None)
            _pacers[(run_id, attempt)] = pacer
        return pacer


def drop_run_state(run_id: str, attempt: str) -> None:
    """After the send phase: forget the run's control, close this process's pacer and remove
    the shared slot file."""
    with _pacers_lock:
        _controls.pop((run_id, attempt), None)
        pacer = _pacers.pop((run_id, attempt), None)
    if pacer is not None:
        pacer.close()
    if attempt:
        pacer_path(run_id, attempt).unlink(missing_ok=True)


def run_control(spec: CampaignSpec, run_id: str, attempt: str = "") -> RunControl:
    """One control per run per process, and per ``attempt`` (the Prefect flow run: a resume
    starts afresh, not stopped)."""
    with _pacers_lock:
        control = _controls.get((run_id, attempt))
        if control is None:
            control = _controls[(run_id, attempt)] = RunControl.for_spec(spec)
        return control


def message_id_for(run_id: str, delivery_id: int, domain: str) -> str:
    """Deterministic per run and recipient: a re-send carries the same Message-ID."""
    return f"<{run_id}.{delivery_id}@{domain}>"


@dataclass
class _RunParts:
    """What every chunk of a run needs, built once per run per process (templates compiled,
    attachments encoded, the tracker and the ledger opened): ``compose`` is thread-safe."""

    ledger: Any
    compose: Compose
    sender: str
    sender_for: Callable[[Claim], str | None] | None


_parts: dict[tuple[str, str, str], _RunParts] = {}
_parts_lock = threading.Lock()
_PARTS_KEPT = 4  # runs whose parts a process keeps (a worker process serves one run at a time)


def _run_parts(spec: CampaignSpec, run_id: str, database_url: str) -> _RunParts:
    key = (run_id, database_url, spec.model_dump_json())
    with _parts_lock:
        parts = _parts.get(key)
        if parts is None:
            parts = _build_parts(spec, run_id, database_url)
            while len(_parts) >= _PARTS_KEPT:
                del _parts[next(iter(_parts))]
            _parts[key] = parts
        return parts


def _build_parts(spec: CampaignSpec, run_id: str, database_url: str) -> _RunParts:
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import Recipient
    from mailcast.tracking.links import Tracker
    from tasks.message import MessageBuilder
    from tasks.render import CampaignTemplates

    ledger = Ledger(database_url)
    templates = CampaignTemplates(spec, ledger.columns(run_id))
    builder = MessageBuilder(spec)
    domain = builder.envelope_sender.rpartition("@")[2] or "mailcast.invalid"
    tracker = Tracker.for_run(spec, run_id, ledger.engine)  # inert when tracking is off

    def compose(claim: Claim) -> tuple[str, bytes]:
        message_id = message_id_for(run_id, claim.id, domain)
        recipient = Recipient(claim.row_no, claim.address, claim.fields)
        extra = {"message_id": message_id, **tracker.context(claim.id)}  # unsubscribe_url
        rendered, head = tracker.apply(claim.id, templates.render(recipient, extra))
        to = envelope_address(claim.address)
        return message_id, head + builder.build(rendered, to, message_id, row=claim.row_no)

    def sender_for(claim: Claim) -> str | None:
        return tracker.envelope_sender(claim.id)

    return _RunParts(
        ledger, compose, builder.envelope_sender, sender_for if tracker.active else None
    )


def _transports(target: Target) -> Callable[[], Transport]:
    """A factory of new, unopened transports to ``target`` (its SMTP settings, or block, are
    looked up once)."""
    from mailcast.transport.target import make_transport, smtp_config

    if target.dry_run:
        return lambda: make_transport(target)
    from mailcast.transport.smtp import SmtpTransport

    config = smtp_config(target)
    return lambda: SmtpTransport(config)


def deliver_chunk(
    spec: CampaignSpec,
    run_id: str,
    bounds: tuple[int, int],
    database_url: str,
    target: Target,
    *,
    control: RunControl | None = None,
    threads: int = 1,
    pacer: Pacer | None = None,
) -> ChunkResult:
    """Send a chunk: the pending rows of ``run_id`` with ids in ``bounds``, over ``threads``
    connections (engine loops in threads sharing the chunk's rows). What the run's chunks
    need is built once per process (templates compiled, attachments encoded). When the run
    stops, its reason is kept as the run's note. ``pacer`` defaults to the run's pacer in this
    process (``rate_limit``)."""
    parts = _run_parts(spec, run_id, database_url)
    ledger = parts.ledger
    control = control if control is not None else RunControl.for_spec(spec)
    if pacer is None:
        pacer = run_pacer(run_id, spec.rate_limit)
    work = ChunkWork(ledger.pending_ids(run_id, bounds[0], bounds[1]))
    threads = max(1, min(threads, len(work)))
    new_transport = _transports(target)
    # the connections' claims share transactions (tasks/claim_group.py)
    store: Store = ClaimGroup(ledger) if threads > 1 else ledger

    def loop() -> ChunkResult:
        return send_chunk(
            store,
            new_transport(),
            parts.compose,
            parts.sender,
            run_id,
            bounds[0],
            bounds[1],
            max_attempts=spec.max_attempts,
            pacer=pacer,
            control=control,
            sender_for=parts.sender_for,
            work=work,
        )

    try:
        if threads == 1:
            return loop()
        return _in_threads(loop, threads)
    except (RunStopped, AuthError, TlsError) as exc:
        ledger.set_run(run_id, note=str(exc))  # the summary shows it for a paused run
        raise


def _in_threads(loop: Callable[[], ChunkResult], threads: int) -> ChunkResult:
    """Run ``loop`` in ``threads`` threads; add up their results. If any failed, raise the
    error that says most (what stopped the run, else the first), after all have finished."""
    results: list[ChunkResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            result = loop()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    workers = [
        threading.Thread(target=run, name=f"mailcast-send-{i}", daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        stopping = [e for e in errors if isinstance(e, AuthError | TlsError | RunStopped)]
        raise (stopping or errors)[0]
    total = ChunkResult()
    for r in results:
        total.add(r)
    return total


def send_chunk_run(
    spec: CampaignSpec,
    run_id: str,
    bounds: tuple[int, int],
    database_url: str,
    target: Target,
    threads: int = 1,
) -> ChunkResult:
    """The ``send-chunk`` task's body: one chunk over ``threads`` connections. Module-level and
    importable by name: a process pool worker unpickles the task by reference."""
    from prefect.runtime import flow_run

    attempt = str(flow_run.get_id() or "")
    control = run_control(spec, run_id, attempt)
    pacer = run_pacer(run_id, spec.rate_limit, attempt)
    return deliver_chunk(
        spec, run_id, bounds, database_url, target, control=control, threads=threads, pacer=pacer
    )


send_chunk_task = task(
    name="send-chunk",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_is_retryable,
    task_run_name="send-chunk-{bounds[0]}-{bounds[1]}",
)(send_chunk_run)


def preload() -> None:
    """Import what sending needs (a worker process calls it as it starts: see the flow)."""
    import prefect.task_engine  # noqa: F401

    import mailcast.ledger.store
    import mailcast.transport.smtp  # noqa: F401
    import tasks.message
    import tasks.render  # noqa: F401


def _never(task: object, task_run: object, state: object) -> bool:
    return False


# retries=1 with a condition that never retries: Prefect then fails the task without logging a
# traceback (retries=0 logs one); the error is the user's to fix, and the CLI prints one line.
@task(name="check-smtp", retries=1, retry_condition_fn=_never)
def check_transport_task(target: Target, limit: tuple[str, int | None] | None = None) -> str:
    """Connect (and log in) once before any row is touched: wrong credentials or TLS stop the
    run here, with host:port in the message, before a single recipient is marked. With the
    server's concurrency ``limit`` (name, size), the probe holds one of its slots: it is a
    connection like any other."""
    from contextlib import nullcontext

    from mailcast.transport.target import make_transport
    from tasks.limits import holding

    transport = make_transport(target)
    held = holding(limit[0], 1) if limit is not None and limit[1] is not None else None
    with held or nullcontext():
        transport.open()
        transport.close()
    return transport.where


@task(name="check-message", retries=1, retry_condition_fn=_never)
def check_message_task(spec: CampaignSpec) -> int:
    """Build the campaign's fixed parts once (sender, attachments: missing, a directory,
    outside the campaign folder, too large) before the run is planned; returns the
    attachments' encoded size."""
    from tasks.message import MessageBuilder

    return MessageBuilder(spec).attachment_bytes
