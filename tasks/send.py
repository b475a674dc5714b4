"""The send engine: one chunk of a run's ledger rows over one reused connection.

It depends on two small interfaces: a ``Store`` (the ledger: claim rows, record outcomes) and a
``Transport`` (SMTP, or the outbox folder in a dry run), plus a ``compose`` callable that turns a
claimed row into (Message-ID, message bytes).

The loop, per batch: claim up to N pending rows (marked ``sending`` and committed *before* any
DATA is transmitted) → send each → record all outcomes in one statement. So after a crash only
the rows of the batch in flight are ``sending`` (they become ``unknown`` on resume); a row marked
``sent`` is never claimed again. The batch size adapts so a batch takes ~0.25 s: large on a fast
server, small on a slow one.

Replies: 2xx → sent. 5xx → failed (permanent; reason names the stage, code and text). 4xx or a
dropped connection → pending again and retried after an exponential backoff with jitter, up to
``max_attempts``; then failed with a reason starting "temporary" (``mailcast retry --failed``
picks those up). AuthError/TlsError stop the chunk at once: nothing in flight is marked failed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailcast.errors import (
    AttachmentError,
    AuthError,
    ConnectError,
    SmtpReplyError,
    TemplateError,
    TlsError,
)
from mailcast.ledger.models import FAILED, PENDING, SENT
from mailcast.ledger.store import Claim, Outcome, Store
from mailcast.spec import CampaignSpec
from mailcast.transport.base import Reply, Transport
from mailcast.transport.target import Target
from tasks._prefect import task

log = logging.getLogger("mailcast.send")

Compose = Callable[[Claim], tuple[str, bytes]]

TARGET_BATCH_SECONDS = 0.25
MAX_BATCH = 200


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


def _backoff(attempt: int, base: float) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to base, 2 → 2*base, ...)."""
    return base * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    connect_retries: int = 5,
) -> ChunkResult:
    """Send every pending row of ``run_id`` with id in [lo, hi]; return what happened."""
    result = ChunkResult()
    deferred: dict[int, float] = {}  # row id → monotonic time it may be retried
    batch_size = 10
    _open_with_retries(transport, connect_retries, retry_base)
    try:
        while True:
            now = time.monotonic()
            due = [i for i, t in deferred.items() if t <= now]
            if due:
                for i in due:
                    del deferred[i]
                claims = store.claim_ids(run_id, due)
            else:
                claims = store.claim(run_id, lo, hi, batch_size, exclude=list(deferred))
            if not claims:
                if not deferred:
                    break
                time.sleep(max(0.0, min(deferred.values()) - time.monotonic()))
                continue
            started = time.monotonic()
            _send_batch(
                store, transport, compose, sender, claims, result, deferred,
                max_attempts=max_attempts, retry_base=retry_base, pacer=pacer,
            )  # fmt: skip
            took = time.monotonic() - started
            per_msg = took / len(claims)
            batch_size = max(1, min(MAX_BATCH, int(TARGET_BATCH_SECONDS / max(per_msg, 1e-5))))
    finally:
        transport.close()
    return result


def _open_with_retries(transport: Transport, retries: int, base: float) -> None:
    for attempt in range(1, retries + 2):
        try:
            transport.open()
            return
        except ConnectError:
            if attempt > retries:
                raise
            time.sleep(_backoff(attempt, base))


def _send_batch(
    store: Store,
    transport: Transport,
    compose: Compose,
    sender: str,
    claims: list[Claim],
    result: ChunkResult,
    deferred: dict[int, float],
    *,
    max_attempts: int,
    retry_base: float,
    pacer: Pacer | None,
) -> None:
    outcomes: list[Outcome] = []
    done: set[int] = set()
    in_flight: int | None = None
    try:
        for claim in claims:
            try:
                message_id, data = compose(claim)
            except (TemplateError, AttachmentError, ValueError) as exc:
                # This recipient's message cannot be built (a template fails on its data, the
                # message is too large, an address unusable in a header): final for the row.
                kind = "template error" if isinstance(exc, TemplateError) else "cannot build"
                outcomes.append(Outcome(claim.id, FAILED, reason=f"{kind}: {exc}"))
                done.add(claim.id)
                result.failed += 1
                result.reasons[kind] = result.reasons.get(kind, 0) + 1
                continue
            if pacer is not None:
                pacer.wait()
            in_flight = claim.id
            try:
                reply = _send_reconnecting(transport, sender, claim.address, data, retry_base)
            except SmtpReplyError as exc:
                in_flight = None
                outcomes.append(_refused(claim, exc, message_id, max_attempts, result))
                if outcomes[-1].status == PENDING:
                    deferred[claim.id] = time.monotonic() + _backoff(claim.attempts, retry_base)
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
    except (AuthError, TlsError, ConnectError):
        # The message in flight was never transmitted (we could not connect): give it back.
        in_flight = None
        raise
    finally:
        # Rows never attempted go back to pending; the one in flight (if an unexpected error
        # struck mid-send) stays `sending` and is reported as unknown on resume.
        rest = [
            Outcome(c.id, PENDING, reason=None)
            for c in claims
            if c.id not in done and c.id != in_flight
        ]
        store.record(outcomes + rest)


def _send_reconnecting(
    transport: Transport, sender: str, address: str, data: bytes, base: float
) -> Reply:
    """Send; if the server cannot be reached, keep trying with backoff (ConnectError after the
    last try stops the chunk, and Prefect's retry of the chunk takes over)."""
    for attempt in range(1, 7):
        try:
            return transport.send(sender, address, data)
        except ConnectError:
            if attempt == 6:
                raise
            time.sleep(_backoff(attempt, base))
    raise AssertionError("unreachable")


def _refused(
    claim: Claim, exc: SmtpReplyError, message_id: str, max_attempts: int, result: ChunkResult
) -> Outcome:
    code = exc.code or None
    text = _short(exc.text)
    if exc.permanent:
        result.failed += 1
        key = f"rejected {exc.code}"
        result.reasons[key] = result.reasons.get(key, 0) + 1
        stage = f" at {exc.stage}" if exc.stage else ""
        return Outcome(
            claim.id, FAILED, reason=f"rejected{stage}: {exc.code} {text}",
            smtp_code=code, smtp_reply=text, message_id=message_id,
        )  # fmt: skip
    if claim.attempts >= max_attempts:
        result.failed += 1
        key = "temporary failure"
        result.reasons[key] = result.reasons.get(key, 0) + 1
        return Outcome(
            claim.id, FAILED,
            reason=f"temporary failure after {claim.attempts} attempts: {exc.code or ''} {text}".replace("  ", " "),
            smtp_code=code, smtp_reply=text, message_id=message_id,
        )  # fmt: skip
    result.retried += 1
    return Outcome(
        claim.id, PENDING,
        reason=f"temporary: {exc.code or ''} {text} (attempt {claim.attempts} of {max_attempts})".replace("  ", " "),
        smtp_code=code, smtp_reply=text,
    )  # fmt: skip


def _is_retryable(task: object, task_run: object, state: object) -> bool:
    """Prefect retry condition: never retry a chunk that failed on credentials or TLS."""
    try:
        state.result()  # type: ignore[attr-defined]
    except (AuthError, TlsError):
        return False
    except Exception:
        return True
    return True


# -- wiring one chunk of a run: the ledger, the campaign's templates and the transport ----------

_pacers: dict[str, Pacer] = {}
_pacers_lock = threading.Lock()


def run_pacer(run_id: str, rate: float | None) -> Pacer | None:
    """One pacer per run per process: the run's threads share its rate."""
    if rate is None:
        return None
    with _pacers_lock:
        return _pacers.setdefault(run_id, Pacer(rate))


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
    retry_base: float = 1.0,
) -> ChunkResult:
    """Build what a chunk needs (once per chunk: templates compiled, attachments encoded) and
    run the engine over it."""
    from mailcast.ledger.store import Ledger
    from mailcast.recipients import Recipient
    from mailcast.transport.target import make_transport
    from tasks.message import MessageBuilder
    from tasks.render import CampaignTemplates

    ledger = Ledger(database_url)
    templates = CampaignTemplates(spec, ledger.columns(run_id))
    builder = MessageBuilder(spec)
    domain = builder.envelope_sender.rpartition("@")[2] or "mailcast.invalid"

    def compose(claim: Claim) -> tuple[str, bytes]:
        message_id = message_id_for(run_id, claim.id, domain)
        recipient = Recipient(claim.row_no, claim.address, claim.fields)
        rendered = templates.render(recipient, {"message_id": message_id})
        return message_id, builder.build(rendered, claim.address, message_id, row=claim.row_no)

    return send_chunk(
        ledger,
        make_transport(target),
        compose,
        builder.envelope_sender,
        run_id,
        bounds[0],
        bounds[1],
        max_attempts=spec.max_attempts,
        retry_base=retry_base,
        pacer=run_pacer(run_id, spec.rate_limit),
    )


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
    return deliver_chunk(spec, run_id, bounds, database_url, target)


@task(name="check-smtp", retries=0)
def check_transport_task(target: Target) -> str:
    """Connect (and log in) once before any row is touched: wrong credentials or TLS stop the
    run here, with host:port in the message, before a single recipient is marked."""
    from mailcast.transport.target import make_transport

    transport = make_transport(target)
    transport.open()
    transport.close()
    return transport.where
