"""``POST /hooks/mailgun``: Mailgun's webhooks (JSON, one event a post).

Mailgun signs each post in its body: ``signature`` holds ``timestamp``, ``token`` (random, 50
characters) and ``signature``, the hex HMAC-SHA256 of timestamp and token concatenated, keyed
with the HTTP webhook signing key (Sending → Webhooks → HTTP webhook signing key), set as
``MAILCAST_MAILGUN_WEBHOOK_KEY``. Wrongly signed, stale (older than ``MAILCAST_WEBHOOK_MAX_AGE``)
or replayed posts (a token seen before) are refused.

``event-data``: ``failed`` with ``severity`` permanent (a bounce, classified by its delivery
status; Mailgun's own suppressions, ``reason`` suppress-bounce / suppress-complaint /
suppress-unsubscribe, are a hard bounce, a complaint, an unsubscribe) or temporary (a deferral:
Mailgun retries), ``complained``, ``unsubscribed``, ``delivered``. The message is found by
``message.headers.message-id`` (Mailgun's id, or mailcast's own Message-ID when Mailgun kept it).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailcast.engagement import bounces
from mailcast.engagement.provider_events import ProviderEvent, bounce_outcome, timestamp
from mailcast.web.hooks.common import (
    Hooks,
    Refused,
    integer,
    obj,
    parse_json,
    read_body,
    refusal,
    same,
    seconds,
    text,
)

_SIMPLE = {
    "complained": bounces.COMPLAINT,
    "unsubscribed": bounces.UNSUBSCRIBE,
    "delivered": bounces.DELIVERED,
}
_SUPPRESSED = {
    "suppress-bounce": bounces.HARD,
    "suppress-complaint": bounces.COMPLAINT,
    "suppress-unsubscribe": bounces.UNSUBSCRIBE,
}


def signature_of(key: str, stamp: str, token: str) -> str:
    return hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()


def event(d: dict[str, Any]) -> ProviderEvent:
    name = str(d.get("event") or "")
    ds = obj(d.get("delivery-status"))
    diagnostic = " ".join(
        t for t in (text(ds.get("message")), text(ds.get("description"))) if t
    ).strip()
    outcome = _SIMPLE.get(name, bounces.IGNORED)
    status, code = text(ds.get("enhanced-code"), 20), integer(ds.get("code"))
    reason = str(d.get("reason") or "")
    if name == "failed":
        if str(d.get("severity")) != "permanent":  # Mailgun tries again
            outcome = bounces.DEFERRAL
            status = status or bounces.status_and_code(diagnostic)[0]
        elif reason in _SUPPRESSED:
            outcome = _SUPPRESSED[reason]
        else:
            outcome, status, code = bounce_outcome(True, status, code, diagnostic)
    mid = str(obj(obj(d.get("message")).get("headers")).get("message-id") or "")
    extra = {k: str(d[k])[:100] for k in ("severity", "reason") if d.get(k)}
    return ProviderEvent(
        key=f"mailgun:{d.get('id') or ''}",
        outcome=outcome if d.get("id") else bounces.IGNORED,
        event=name,
        provider_ids=(mid,) if mid else (),
        message_ids=(mid,) if mid else (),
        recipient=text(d.get("recipient"), 320),
        status=status,
        code=code,
        diagnostic=diagnostic or None,
        occurred_at=timestamp(d.get("timestamp")),
        extra=extra,
    )


class Mailgun:
    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    async def handle(self, request: Request) -> Response:
        key = self.hooks.config.mailgun_key
        try:
            if not key:
                raise Refused(404, "not configured (MAILCAST_MAILGUN_WEBHOOK_KEY)")
            data = parse_json(await read_body(request))
            sig = data.get("signature") if isinstance(data, dict) else None
            if not isinstance(sig, dict) or not all(
                isinstance(sig.get(k), str | int) for k in ("timestamp", "token", "signature")
            ):
                raise Refused(401, "unsigned")
            stamp, token = str(sig["timestamp"]), str(sig["token"])
            if not same(signature_of(key, stamp, token), str(sig["signature"]).lower()):
                raise Refused(403, "bad signature")
            until = self.hooks.check_fresh(seconds(stamp), "timestamp")
            self.hooks.claim(f"mailgun:{token}", until)
        except Refused as exc:
            return refusal("mailgun", exc)
        payload = data.get("event-data")
        events = [event(payload)] if isinstance(payload, dict) else []
        return await self.hooks.accept("mailgun", events, f"mailgun:{token}")
