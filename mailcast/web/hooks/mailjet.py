"""``POST /hooks/mailjet``: Mailjet's Event API (event notifications, one event a post or a JSON
array of them when Mailjet groups events).

Mailjet does not sign its posts; as its documentation recommends, the endpoint is protected by
HTTP Basic credentials carried in the URL set at Mailjet
(``https://USER:PASSWORD@track.example.com/hooks/mailjet``), the same ``USER:PASSWORD`` as
``MAILCAST_MAILJET_WEBHOOK_AUTH``. A post without them is refused (401), with others too (403).
There is no timestamp to check: an event posted twice (Mailjet retries until it gets a 200) is
recorded once, by a digest of its content.

Kept: ``bounce`` (``hard_bounce`` true: permanent, else soft), ``blocked`` (Mailjet did not send:
an unknown user, invalid domain or an address it blocks after an earlier bounce is a hard
bounce, a spam reporter a complaint, anything else soft), ``spam``, ``unsub``, ``sent`` (a
delivery confirmation). The message is found by ``MessageID`` (or ``Message_GUID``, or
``CustomID`` when the send set one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from mailcast.engagement import bounces
from mailcast.engagement.provider_events import ProviderEvent, bounce_outcome, timestamp
from mailcast.web.hooks.common import Hooks, Refused, parse_json, read_body, refusal, same, text

CHALLENGE = {"WWW-Authenticate": 'Basic realm="mailcast webhooks", charset="UTF-8"'}
_SIMPLE = {
    "spam": bounces.COMPLAINT,
    "unsub": bounces.UNSUBSCRIBE,
    "sent": bounces.DELIVERED,
}
_BLOCKED_HARD = {"user unknown", "invalid domain", "no mail host", "mailbox inactive", "preblocked"}


def credentials(header: str | None) -> str | None:
    """``user:password`` of an ``Authorization: Basic`` header."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def event(e: dict[str, Any]) -> ProviderEvent:
    name = str(e.get("event") or "")
    error = text(e.get("error"), 100)
    related = text(e.get("error_related_to"), 100)
    diagnostic = " ".join(
        t for t in (related and f"{related}:", error, text(e.get("comment"))) if t
    ) or text(e.get("smtp_reply"))
    outcome = _SIMPLE.get(name, bounces.IGNORED)
    status = code = None
    if name == "bounce":
        outcome, status, code = bounce_outcome(bool(e.get("hard_bounce")), None, None, diagnostic)
    elif name == "blocked":
        err = (error or "").lower()
        outcome = bounces.HARD if err in _BLOCKED_HARD else bounces.SOFT
        outcome = bounces.COMPLAINT if err == "spam reporter" else outcome
    ids = tuple(str(e[k]) for k in ("MessageID", "Message_GUID", "CustomID") if e.get(k))
    digest = hashlib.sha256(json.dumps(e, sort_keys=True, default=str).encode()).hexdigest()
    extra: dict[str, Any] = {
        k: str(e[k])[:100] for k in ("hard_bounce", "error_related_to", "error") if k in e
    }
    return ProviderEvent(
        key=f"mailjet:{digest}",
        outcome=outcome,
        event=name,
        provider_ids=ids,
        message_ids=(str(e["CustomID"]),) if e.get("CustomID") else (),
        recipient=text(e.get("email"), 320),
        status=status,
        code=code,
        diagnostic=diagnostic,
        occurred_at=timestamp(e.get("time")),
        extra=extra,
    )


class Mailjet:
    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks

    async def handle(self, request: Request) -> Response:
        expected = self.hooks.config.mailjet_auth
        try:
            if not expected:
                raise Refused(404, "not configured (MAILCAST_MAILJET_WEBHOOK_AUTH)")
            given = credentials(request.headers.get("authorization"))
            if given is None:
                raise Refused(401, "no credentials", CHALLENGE)
            if not same(given, expected):
                raise Refused(403, "wrong credentials")
            data = parse_json(await read_body(request))
        except Refused as exc:
            return refusal("mailjet", exc)
        items = data if isinstance(data, list) else [data]
        events = [event(e) for e in items if isinstance(e, dict)]
        return await self.hooks.accept("mailjet", events)
