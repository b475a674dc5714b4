"""The send engine: one chunk of a run's ledger rows over one reused connection.

It depends on two small interfaces: a ``Store`` (the ledger: claim rows, record outcomes) and a
``Transport`` (SMTP, or the outbox folder in a dry run), plus a ``compose`` callable that turns a
claimed row into (Message-ID, message bytes).

The loop, per batch: claim up to N pending rows (marked ``sending`` and committed *before* any
DATA is transmitted) → send each → record all outcomes in one statement. So after a crash only
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
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

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

log = logging.getLogger("mailcast.send")

Compose = Callable[[Claim], tuple[str, bytes]]

TARGET_BATCH_SECONDS = 0.1
MAX_BATCH = 50
THROTTLE_CODES = frozenset({421, 451, 454})  # "slow down": the whole run backs off
MAX_BACKOFF_DOUBLINGS = 6  # a backoff grows to at most 64 × the base


class Pacer:
    """A smooth rate limiter: one message every 1/rate seconds, no burst-then-sleep.
    Shared by the threads of one process (each run's share of the server's rate)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self.interval
        delay = slot - now
        if delay > 0:
            time.sleep(delay)


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


@dataclass
class _Chunk:
    """One call of ``send_chunk``: what its batches share."""

    store: Store
    transport: Transport
    compose: Compose
    sender: str
    run_id: str
    max_attempts: int
    control: RunControl
    pacer: Pacer | None
    sender_for: Callable[[Claim], str | None] | None = None
    result: ChunkResult = field(default_factory=ChunkResult)
    deferred: dict[int, float] = field(default_factory=dict)  # row id → when it may be retried
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
) -> ChunkResult:
    """Send every pending row of ``run_id`` with id in [lo, hi]; return what happened.
    ``sender_for`` gives a row's own envelope sender (a VERP return path), None for ``sender``.

    Raises RunStopped when the run stopped (this chunk's failures, or another thread's), and
    AuthError/TlsError when the server refuses the credentials or TLS (the run is stopped too).
    """
    if control is None:
        control = RunControl(retry_base=retry_base)
    chunk = _Chunk(
        store, transport, compose, sender, run_id, max_attempts, control, pacer, sender_for
    )
    deferred = chunk.deferred
    batch_size = 10
    try:
        control.check()
        _open(chunk)
        while True:
            control.check()
            now = time.monotonic()
            out_of_time = control.retry_time_left() <= 0
            due = [i for i, t in deferred.items() if t <= now or out_of_time]
            if due:
                for i in due:
                    del deferred[i]
                claims = store.claim_ids(run_id, due)
            else:
                claims = store.claim(run_id, lo, hi, batch_size, exclude=list(deferred))
            if not claims:
                if not deferred:
                    break
                control.sleep(min(deferred.values()) - time.monotonic())
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
        chunk.store.record(outcomes + rest)


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
        chunk.deferred[claim.id] = time.monotonic() + _backoff(claim.attempts, control.retry_base)
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

_pacers: dict[str, Pacer] = {}
_pacers_lock = threading.Lock()
_controls: dict[tuple[str, str], RunControl] = {}


def run_pacer(run_id: str, rate: float | None) -> Pacer | None:
    """One pacer per run per process: the run's threads share its rate."""
    if rate is None:
        return None
    with _pacers_lock:
        return _pacers.setdefault(run_id, Pacer(rate))


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


def deliver_chunk(
    spec: CampaignSpec,
    run_id: str,
    bounds: tuple[int, int],
    database_url: str,
    target: Target,
    *,
    control: RunControl | None = None,
) -> ChunkResult:
    """Build what a chunk needs (once per chunk: templates compiled, attachments encoded) and
    run the engine over it. When the run stops, its reason is kept as the run's note."""
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import Recipient
    from mailcast.tracking.links import Tracker
    from mailcast.transport.target import make_transport
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

    try:
        return send_chunk(
            ledger,
            make_transport(target),
            compose,
            builder.envelope_sender,
            run_id,
            bounds[0],
            bounds[1],
            max_attempts=spec.max_attempts,
            pacer=run_pacer(run_id, spec.rate_limit),
            control=control if control is not None else RunControl.for_spec(spec),
            sender_for=(lambda claim: tracker.envelope_sender(claim.id))
            if tracker.active
            else None,
        )
    except (RunStopped, AuthError, TlsError) as exc:
        ledger.set_run(run_id, note=str(exc))  # the summary shows it for a paused run
        raise


@task(
    name="send-chunk",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_is_retryable,
    task_run_name="send-chunk-{bounds[0]}-{bounds[1]}",
)
def send_chunk_task(
    spec: CampaignSpec, run_id: str, bounds: tuple[int, int], database_url: str, target: Target
) -> ChunkResult:
    from prefect.runtime import flow_run

    control = run_control(spec, run_id, str(flow_run.get_id() or ""))
    return deliver_chunk(spec, run_id, bounds, database_url, target, control=control)


def _never(task: object, task_run: object, state: object) -> bool:
    return False


# retries=1 with a condition that never retries: Prefect then fails the task without logging a
# traceback (retries=0 logs one); the error is the user's to fix, and the CLI prints one line.
@task(name="check-smtp", retries=1, retry_condition_fn=_never)
def check_transport_task(target: Target) -> str:
    """Connect (and log in) once before any row is touched: wrong credentials or TLS stop the
    run here, with host:port in the message, before a single recipient is marked."""
    from mailcast.transport.target import make_transport

    transport = make_transport(target)
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
