"""What the provider webhook endpoints share: their configuration (secrets from the settings or
a Prefect Secret block), reading a bounded body, the freshness and replay checks, and handing
the events over to the ledger.

A post is *refused* (``401`` without credentials, ``403`` with wrong ones, a bad signature, a
stale timestamp or one seen before, ``404`` when the provider is not configured) before anything
is parsed into events, and nothing of it is recorded. A refusal is logged with its reason, never
with the post's content or a secret.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from mailcast.engagement import provider_events
from mailcast.engagement.provider_events import ProviderEvent
from mailcast.errors import TrackingError
from mailcast.errors import WebhookRefused as Refused
from mailcast.settings import Settings

log = logging.getLogger("mailcast.webhooks")

MAX_BODY = 8 * 2**20  # a SendGrid batch can be a few MB
NO_STORE = {"Cache-Control": "no-store"}
_SECRET_KEYS = ("sendgrid_webhook_key", "mailgun_webhook_key", "mailjet_webhook_auth")


@dataclass(frozen=True)
class HookConfig:
    """The webhook secrets. Each provider's endpoint exists only when its secret is set."""

    sendgrid_key: str | None = None
    mailgun_key: str | None = None
    mailjet_auth: str | None = None
    ses_topics: frozenset[str] = frozenset()
    max_age: int = 300
    sns_test_origin: str | None = None
    sns_test_ca: str | None = None

    def __repr__(self) -> str:  # never the secrets
        on = [n for n in ("sendgrid_key", "mailgun_key", "mailjet_auth") if getattr(self, n)]
        return f"HookConfig(configured={on}, ses_topics={len(self.ses_topics)})"

    @classmethod
    def from_settings(cls, settings: Settings) -> HookConfig:
        values: dict[str, Any] = {
            k: v.get_secret_value() for k in _SECRET_KEYS if (v := getattr(settings, k)) is not None
        }
        topics = set(settings.ses_topic_arns)
        if settings.webhook_secrets_block:
            block = _load_block(settings.webhook_secrets_block)
            for k in _SECRET_KEYS:
                if k not in values and block.get(k):
                    values[k] = str(block[k])
            extra = block.get("ses_topic_arns") or []
            topics |= {extra} if isinstance(extra, str) else {str(a) for a in extra}
        auth = values.get("mailjet_webhook_auth")
        if auth is not None and (":" not in auth or auth.startswith(":")):
            raise TrackingError(
                "the Mailjet webhook credentials must read user:password",
                where="MAILCAST_MAILJET_WEBHOOK_AUTH",
                hint="the same user:password as in the event URL set at Mailjet",
            )
        return cls(
            sendgrid_key=values.get("sendgrid_webhook_key"),
            mailgun_key=values.get("mailgun_webhook_key"),
            mailjet_auth=auth,
            ses_topics=frozenset(t.strip() for t in topics if t.strip()),
            max_age=settings.webhook_max_age,
            sns_test_origin=settings.sns_test_origin,
            sns_test_ca=str(settings.sns_test_ca) if settings.sns_test_ca else None,
        )


def _load_block(name: str) -> dict[str, Any]:
    where = f"secret block {name!r}"
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name).get()  # type: ignore[union-attr]
    except Exception as exc:
        raise TrackingError(
            f"cannot load the Prefect Secret block: {type(exc).__name__}", where=where
        ) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise TrackingError(
            "the webhook secrets block must hold a JSON object",
            where=where,
            hint='e.g. {"mailgun_webhook_key": "...", "ses_topic_arns": ["arn:aws:sns:..."]}',
        )
    return value


class ReplayCache:
    """Signatures (or tokens) of posts accepted lately, each kept until its timestamp is too old
    to be accepted anyway; bounded (the oldest go first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def claim(self, key: str, until: float) -> bool:
        """Take ``key`` (True) unless it was taken and has not expired (False)."""
        now = time.time()
        with self._lock:
            while self._seen and (len(self._seen) >= self._limit or _first(self._seen) < now):
                self._seen.popitem(last=False)
            if key in self._seen and self._seen[key] >= now:
                return False
            self._seen[key] = until
            return True

    def release(self, key: str) -> None:
        """Forget ``key`` (its post could not be recorded: the provider's retry is welcome)."""
        with self._lock:
            self._seen.pop(key, None)


def _first(seen: OrderedDict[str, float]) -> float:
    return next(iter(seen.values()))


@dataclass
class Hooks:
    """The endpoints' shared state: the ledger's engine, the configuration, the replay cache."""

    engine: Any
    config: HookConfig
    replays: ReplayCache = field(default_factory=ReplayCache)

    def check_fresh(self, stamp: float | None, what: str) -> float:
        """``stamp`` (Unix seconds) must be within ``max_age`` of now; returns when a replay of
        it stops mattering (it is refused as stale from then on)."""
        now = time.time()
        if stamp is None:
            raise Refused(403, f"no {what}")
        if abs(now - stamp) > self.config.max_age:
            raise Refused(403, f"{what} too old (or in the future): a replay?")
        return stamp + self.config.max_age + 1

    def claim(self, key: str, until: float) -> None:
        if not self.replays.claim(key, until):
            raise Refused(403, "seen before: a replay")

    async def accept(
        self, provider: str, events: Sequence[ProviderEvent], replay_key: str | None = None
    ) -> Response:
        """Record the events of a verified post; ``200`` with counts, or ``503`` (the provider
        retries) when the ledger cannot take them."""
        try:
            summary = await run_in_threadpool(provider_events.record, self.engine, provider, events)
        except Exception:
            if replay_key:
                self.replays.release(replay_key)
            log.exception("%s webhook: could not record %d event(s)", provider, len(events))
            return PlainTextResponse(
                "temporarily unavailable",
                status_code=503,
                headers={**NO_STORE, "Retry-After": "60"},
            )
        counts = {
            "received": summary.read,
            "recorded": summary.recorded,
            "already": summary.already,
            "ignored": summary.ignored,
            "suppressed": summary.suppressed,
        }
        log.info("%s webhook: %s", provider, counts)
        return JSONResponse(counts, headers=NO_STORE)


def refusal(provider: str, exc: Refused) -> Response:
    log.warning("%s webhook: refused (%s)", provider, exc.why)
    text = {
        400: "bad request",
        401: "unauthorized",
        404: "not found",
        413: "too large",
        503: "temporarily unavailable",
    }.get(exc.status, "forbidden")
    return PlainTextResponse(text, status_code=exc.status, headers={**NO_STORE, **exc.headers})


async def read_body(request: Request) -> bytes:
    """The raw body, refused (413) past ``MAX_BODY``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, "body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, "body too large")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """A verified body's JSON (a provider never sends anything else: 400 otherwise)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "not JSON") from None


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time comparison."""
    x = a.encode() if isinstance(a, str) else a
    y = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(x, y)


def text(value: Any, limit: int = 500) -> str | None:
    """A provider's field as text (None for missing/empty), cut to ``limit`` characters."""
    if value is None or value == "":
        return None
    return str(value)[:limit]


def integer(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def seconds(value: Any) -> float | None:
    """A Unix timestamp (a number or its text), None when it is not one."""
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return None
    return stamp if stamp == stamp else None  # not NaN


def obj(value: Any) -> dict[str, Any]:
    """A JSON object of a provider's post, or an empty one when it is anything else."""
    return value if isinstance(value, dict) else {}
