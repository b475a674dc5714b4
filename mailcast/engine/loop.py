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

Replies (the outcome carries the code and the stage as fields, ``smtp_code`` and ``smtp_stage``):
2xx → sent. 5xx → failed (permanent; reason names the stage, code and text; a 5xx to RCPT is
recorded as ``hard bounce: <code> <text> (at RCPT)``). 4xx or a dropped connection → pending again
and retried after an exponential backoff with jitter, up to ``max_attempts``; then failed
(``mailcast retry --failed`` picks those up, and refusals at MAIL: the sender's problem). A reply
to the final dot that never comes (a drop or a timeout) → ``unknown``, never retried: the server
may have the message. An authentication-class reply (530, 535, 5.7.8 …) is an AuthError: it stops
the run. mailcast's own refusal (no SMTPUTF8 for an internationalized address) → failed, without
a code or stage. An API provider's answers take the same paths by their kind (temporary,
throttled, permanent; a request sent whole whose response never came → ``unknown``); its code
(the HTTP status) is part of the reply text and the reason, never ``smtp_code``, and the id it
gave an accepted message is stored as ``provider_message_id``.

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
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from mailcast.compose.composer import envelope_address
from mailcast.engine.control import RunControl, backoff, short
from mailcast.engine.journal import Journal
from mailcast.engine.pacing import Pacer
from mailcast.errors import (
    AttachmentError,
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    LedgerUnavailable,
    MessageBuildError,
    RunStopped,
    SmtpReplyError,
    TemplateError,
    TlsError,
)
from mailcast.ledger.models import FAILED, PENDING, SENT, UNKNOWN, SmtpStage
from mailcast.ledger.store import TEMPORARY_FAILURE, Claim, Outcome, Store
from mailcast.transport.base import Reply, Transport

log = logging.getLogger("mailcast.send")

Compose = Callable[[Claim], tuple[str, bytes]]
T = TypeVar("T")

TARGET_BATCH_SECONDS = 0.1
MAX_BATCH = 50


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
class _Connection:
    """One connection's engine loop: what its batches share."""

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
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this sender's claims
    per_message: bool = True  # hand each row over on its own (else: the batch, when claimed)
    journal: Journal | None = None  # hand-overs go to this journal (claims only reserve)
    result: ChunkResult = field(default_factory=ChunkResult)
    deferring: list[tuple[int, float]] = field(default_factory=list)  # this batch's retries
    unrecorded: list[Outcome] = field(default_factory=list)  # recorded with the next claim
    connect_failures: int = 0  # in a row


def run_connection(
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
    token: str | None = None,
    per_message: bool = True,
    journal_dir: Path | None = None,
) -> ChunkResult:
    """Send every pending row of ``run_id`` with id in [lo, hi] over ``transport`` (one
    connection); return what happened. Several calls (threads, one connection each) may share
    one ``work`` (the chunk's rows, see :class:`ChunkWork`); without it the rows are listed here.
    ``sender_for`` gives a row's own envelope sender (a VERP return path), None for ``sender``.
    ``token`` names this sender's claims in the ledger (the connections of a chunk share one).
    ``per_message`` (the campaign's ``crash_window: message``) hands each row over just before
    its message goes on the wire: a crash leaves at most that message in doubt. Without it the
    claimed batch is handed over with the claim (one statement a batch): a crash leaves the
    batch's unsent rows in doubt too. With ``journal_dir`` (``crash_window: message``, the
    default) claims only reserve rows and each hand-over is written to this connection's local
    journal (engine/journal.py; ``token`` must be a journal token): the same window as
    ``per_message`` for one file append a message instead of a ledger statement.

    Raises RunStopped when the run stopped (this chunk's failures, or another thread's), and
    AuthError/TlsError when the server refuses the credentials or TLS (the run is stopped too).
    """
    if control is None:
        control = RunControl(retry_base=retry_base)
    if work is None:
        work = ChunkWork(store.pending_ids(run_id, lo, hi))
    chunk = _Connection(
        store, transport, compose, sender, run_id, max_attempts, control, pacer, work, sender_for
    )
    if token is not None:
        chunk.token = token
    chunk.per_message = per_message
    batch_size = 10
    try:
        control.check()
        if not len(work) and work.next_due() is None:
            return chunk.result  # nothing left for this connection: do not connect
        _open(chunk)
        if journal_dir is not None:
            chunk.journal = Journal(journal_dir, run_id, chunk.token)
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
            # The previous batch's outcomes and this claim: one transaction. The rows are only
            # reserved: each is handed over (``_hand_over``) just before its message is sent.
            record = chunk.unrecorded
            if chunk.journal is not None:
                chunk.journal.flush()  # the journal knows every outcome before the ledger does
            # by batch: handed over with the claim; else each row on its own
            hand_over = () if per_message or chunk.journal is not None else ids
            claims = _ledger(
                chunk,
                partial(
                    store.exchange,
                    run_id,
                    token=chunk.token,
                    record=record,
                    claim=ids,
                    hand_over=hand_over,
                ),
            ).claims
            _recorded(chunk)
            if chunk.journal is not None:
                chunk.journal.committed()  # a claim is a durable commit: the journal starts anew
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
            if chunk.journal is not None:
                chunk.journal.close()
    return chunk.result


def _open(chunk: _Connection) -> None:
    """Connect (a no-op for an open transport), waiting while the server cannot be reached."""
    while True:
        try:
            chunk.transport.open()
            chunk.connect_failures = 0
            return
        except ConnectError as exc:
            _wait_for_server(chunk, exc)


def _wait_for_server(chunk: _Connection, exc: ConnectError) -> None:
    """The server cannot be reached (down, or "421 busy"): back off and let the caller try
    again, until the run's retry time is used up; then stop the run."""
    control = chunk.control
    chunk.connect_failures += 1
    if control.retry_time_left() <= 0:
        control.give_up(
            "the SMTP server could not be reached",
            exc,
            hint=f"check that the server is up and reachable, then `mailcast resume"
            f" {chunk.run_id}` (only rows not yet sent are sent)",
        )
    if exc.busy:  # a "421 busy" greeting: a slow-down too
        control.throttle(exc.message)
    delay = min(backoff(chunk.connect_failures, control.retry_base), control.retry_time_left())
    log.info("cannot connect (%s); trying again in %.1fs", exc, delay)
    control.sleep(delay)
    control.check()


def _send_batch(chunk: _Connection, claims: list[Claim]) -> None:
    """Send the claimed rows one by one. Each outcome goes into ``chunk.unrecorded`` at once and
    is written with the next hand-over (or claim): at any time at most the message in flight and
    the one before it are not final in the ledger."""
    control, result = chunk.control, chunk.result
    done: set[int] = set()
    in_flight: int | None = None
    unexpected: BaseException | None = None
    completed = False
    try:
        for claim in claims:
            control.check()
            try:
                message_id, data = chunk.compose(claim)
            except (TemplateError, AttachmentError, MessageBuildError) as exc:
                # This recipient's message cannot be built (a template fails on its data, the
                # message is too large, an address unusable in a header): final for the row.
                # Any other error is a bug: it stops the chunk, the row goes back to pending.
                kind = "template error" if isinstance(exc, TemplateError) else "cannot build"
                reason = f"{kind}: {exc}"
                chunk.unrecorded.append(Outcome(claim.id, FAILED, reason=reason))
                done.add(claim.id)
                result.failed += 1
                result.count(kind)
                control.failed(reason, None, chunk.run_id)
                continue
            if chunk.pacer is not None:
                chunk.pacer.wait()
            control.gate()
            if chunk.journal is not None:
                chunk.journal.handing_over(claim.id)
            elif chunk.per_message and not _hand_over(chunk, claim):
                done.add(claim.id)  # taken back by a resume elsewhere: not ours to send
                continue
            in_flight = claim.id
            try:
                mail_from = (chunk.sender_for(claim) if chunk.sender_for else None) or chunk.sender
                reply = _send_reconnecting(chunk, mail_from, envelope_address(claim.address), data)
            except DeliveryRefused as exc:
                in_flight = None
                outcome = _refused(chunk, claim, exc, message_id)
                if chunk.journal is not None and outcome.status != UNKNOWN:
                    chunk.journal.refused(claim.id)  # the server did not keep it
                chunk.unrecorded.append(outcome)
                done.add(claim.id)
                continue
            in_flight = None
            provider_id = reply.provider_message_id  # None: an SMTP server's reply
            if chunk.journal is not None:
                chunk.journal.accepted(claim.id, reply.code, message_id, provider_id)
            chunk.unrecorded.append(
                Outcome(
                    claim.id,
                    SENT,
                    smtp_code=reply.code if provider_id is None else None,
                    smtp_reply=short(reply.text),
                    message_id=message_id,
                    smtp_stage=SmtpStage.DATA if provider_id is None else None,
                    provider_message_id=provider_id,
                )
            )
            done.add(claim.id)
            result.sent += 1
            control.succeeded(chunk.run_id)
        completed = True
    except (AuthError, TlsError, ConnectError, RunStopped):
        # Nothing of the message in flight was transmitted (we could not (re)connect, or the
        # run stopped before it): it goes back to pending with the rest.
        if in_flight is not None and chunk.journal is not None:
            chunk.journal.refused(in_flight)
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
                    reason=f"unexpected error while sending ({short(what, 200)}); may have"
                    " been delivered",
                )
            )
        chunk.unrecorded.extend(rest)
        if not completed:
            _flush(chunk)


def _flush(chunk: _Connection) -> None:
    """Record the outcomes not yet recorded (normally they go with the next hand-over or claim,
    in one transaction)."""
    if chunk.journal is not None:
        chunk.journal.flush()
    if chunk.unrecorded:
        record = chunk.unrecorded
        _ledger(chunk, lambda: chunk.store.record(record, token=chunk.token))
    _recorded(chunk)


def _hand_over(chunk: _Connection, claim: Claim) -> bool:
    """Before a message goes on the wire: mark its row handed over, with the outcomes not yet
    recorded, in one transaction. After a crash only rows handed over are in doubt (at most
    the one in flight per connection, and its predecessor if its reply had come but was not
    yet recorded); every row only reserved is sent on resume. False when this sender no
    longer holds the row (a resume elsewhere took it back): it is left alone."""
    record = chunk.unrecorded
    done = _ledger(
        chunk,
        lambda: chunk.store.exchange(
            chunk.run_id, token=chunk.token, record=record, hand_over=[claim.id]
        ),
    )
    _recorded(chunk)
    return claim.id in done.handed


def _ledger(chunk: _Connection, call: Callable[[], T]) -> T:
    """A ledger call; while the database cannot be reached, wait and try again (the same
    call: claims, hand-overs and records are safe to repeat), counted against the run's retry
    time. When that is used up the run stops (``mailcast resume`` continues it)."""
    control = chunk.control
    failures = 0
    while True:
        try:
            return call()
        except LedgerUnavailable as exc:
            failures += 1
            if control.retry_time_left() <= 0:
                control.give_up(
                    "the ledger database could not be reached",
                    exc,
                    hint=f"start the database, then `mailcast resume {chunk.run_id}` (rows"
                    " not yet sent are sent; none is sent twice)",
                )
            delay = min(backoff(failures, control.retry_base), 5.0, control.retry_time_left())
            log.warning("%s; trying again in %.1fs", exc, delay)
            control.sleep(max(delay, 0.05))


def _recorded(chunk: _Connection) -> None:
    """The outcomes are in the ledger: rows to retry become visible to every connection."""
    chunk.unrecorded = []
    for row_id, when in chunk.deferring:
        chunk.work.defer(row_id, when)
    chunk.deferring.clear()


def _send_reconnecting(chunk: _Connection, sender: str, address: str, data: bytes) -> Reply:
    """Send; while the server cannot be reached, wait and try again (``_wait_for_server``).
    Nothing of a message is transmitted before the connection is up, so this never duplicates.
    (A reused connection found closed at MAIL, by a drop or a 421, is the transport's to retry
    once: ``SmtpTransport.send``.)"""
    while True:
        try:
            reply = chunk.transport.send(sender, address, data)
        except ConnectError as exc:
            _wait_for_server(chunk, exc)
            continue
        chunk.connect_failures = 0
        return reply


def _refused(chunk: _Connection, claim: Claim, exc: DeliveryRefused, message_id: str) -> Outcome:
    """The outcome of a refused message; also tells the run's control about it."""
    control, result = chunk.control, chunk.result
    text = short(exc.text)
    stage = _stage(exc.stage)
    if not exc.from_server:
        # mailcast itself would not send it to this server (e.g. SMTPUTF8 missing): final for
        # the row, but no reply of the server (no code, no stage), so never a bounce
        reason = f"not sent: {text}"
        control.failed(reason, exc.where, chunk.run_id)
        result.failed += 1
        result.count("not sent")
        return Outcome(claim.id, FAILED, reason=reason, message_id=message_id)
    if isinstance(exc, ConnectionLost) and exc.maybe_delivered:
        # The whole message went out and the reply to it never came (a drop or a timeout after
        # the final dot): the server may have kept it, and sending it again could deliver a
        # second copy. Like a row in flight at a crash: `unknown`, reported, re-sent only on
        # request (`mailcast resume --resend-unknown`).
        result.count("may have been delivered")
        return Outcome(
            claim.id,
            UNKNOWN,
            reason="may have been delivered: the whole message was sent, the server's reply to"
            f" it never came ({text})",
            smtp_stage=stage,
            message_id=message_id,
        )
    # An SMTP reply's code goes into ``smtp_code``; an API provider's code (its HTTP status)
    # only into the reply text and the reason (``smtp_code`` and ``smtp_stage`` stay NULL).
    smtp = bool(exc.stage) or isinstance(exc, SmtpReplyError)
    code = (exc.code or None) if smtp else None
    reply = f"{exc.code} {text}" if exc.code else text
    if not smtp:
        text = reply
    if exc.throttled:  # "slow down": the whole run backs off
        control.throttle(reply)
    final = exc.permanent or claim.attempts >= chunk.max_attempts
    if not final and control.retry_time_left() > 0:
        result.retried += 1
        # Shared with the chunk's other connections once the outcome is recorded (pending again):
        # a claim before that would find the row still `sending` and drop it.
        chunk.deferring.append(
            (claim.id, time.monotonic() + backoff(claim.attempts, control.retry_base))
        )
        return Outcome(
            claim.id,
            PENDING,
            reason=f"temporary: {reply} (attempt {claim.attempts} of {chunk.max_attempts})",
            smtp_code=code,
            smtp_reply=text,
            smtp_stage=stage,
        )
    if exc.permanent and stage == SmtpStage.RCPT:
        key, reason = "hard bounce", f"hard bounce: {reply} (at RCPT)"
    elif exc.permanent:
        at = f" at {exc.stage}" if exc.stage else ""
        key, reason = f"rejected {exc.code}", f"rejected{at}: {reply}"
    elif claim.attempts >= chunk.max_attempts:
        key = TEMPORARY_FAILURE
        reason = f"{TEMPORARY_FAILURE} after {claim.attempts} attempts: {reply}"
    else:
        key = TEMPORARY_FAILURE
        reason = (
            f"{TEMPORARY_FAILURE}, not retried: the run's retry time"
            f" ({control.max_retry_seconds:g}s) is used up (attempt {claim.attempts}): {reply}"
        )
    control.failed(reason, exc.where, chunk.run_id)
    control.attempted(hard_bounce=key == "hard bounce", where=exc.where, run_id=chunk.run_id)
    result.failed += 1
    result.count(key)
    return Outcome(
        claim.id,
        FAILED,
        reason=reason,
        smtp_code=code,
        smtp_reply=text,
        message_id=message_id,
        smtp_stage=stage,
    )


def _stage(name: str) -> SmtpStage | None:
    """The SMTP stage of a refusal as the ledger stores it (None: not a message's command)."""
    try:
        return SmtpStage(name)
    except ValueError:
        return None
