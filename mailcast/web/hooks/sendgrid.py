"""``POST /hooks/sendgrid``: SendGrid's (signed) Event Webhook.

SendGrid signs each post with ECDSA P-256 / SHA-256 over the ``X-Twilio-Email-Event-Webhook-
Timestamp`` header followed by the raw body; the base64 DER signature is in ``X-Twilio-Email-
Event-Webhook-Signature``; the verification key (Settings → Mail Settings → Event Webhook →
Signature Verification) is set as ``MAILCAST_SENDGRID_WEBHOOK_KEY``. Unsigned, wrongly signed,
stale (older than ``MAILCAST_WEBHOOK_MAX_AGE``) or replayed posts are refused.

The body is a JSON array of events. ``sg_message_id`` is the ``X-Message-Id`` SendGrid returned
at send time, a dot and a suffix: matched on the part before the first dot; ``smtp-id`` is the
message's Message-ID. Kept: ``bounce`` (``type`` bounce: permanent; blocked: soft), ``dropped``
(SendGrid's own suppression lists: a bounced or invalid address is a hard bounce, a spam
reporter a complaint, an unsubscribed address an unsubscribe; other reasons soft), ``spamreport``,
``unsubscribe``, ``group_unsubscribe``, ``delivered``, ``deferred``. Opens, clicks and
``processed`` are ignored (mailcast tracks its own).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from starlette.requests import Request
from starlette.responses import Response

from mailcast.engagement import bounces
from mailcast.engagement.provider_events import ProviderEvent, bounce_outcome, timestamp
from mailcast.errors import TrackingError
from mailcast.web.hooks.common import (
    Hooks,
    Refused,
    parse_json,
    read_body,
    refusal,
    seconds,
    text,
)

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"

_DROPPED = {
    "bounced address": bounces.HARD,
    "invalid": bounces.HARD,
    "spam reporting address": bounces.COMPLAINT,
    "unsubscribed address": bounces.UNSUBSCRIBE,
}
_SIMPLE = {
    "spamreport": bounces.COMPLAINT,
    "unsubscribe": bounces.UNSUBSCRIBE,
    "group_unsubscribe": bounces.UNSUBSCRIBE,
    "delivered": bounces.DELIVERED,
    "deferred": bounces.DEFERRAL,
}


def load_key(value: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER (as its dashboard shows it) or PEM."""
    try:
        if "BEGIN PUBLIC KEY" in value:
            key = load_pem_public_key(value.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(value.split()), validate=True))
    except (ValueError, binascii.Error, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TrackingError(
            "not an ECDSA public key",
            where="MAILCAST_SENDGRID_WEBHOOK_KEY",
            hint="copy the verification key from SendGrid's Event Webhook settings (Signature "
            "Verification)",
        )
    return key


def verify(key: ec.EllipticCurvePublicKey, stamp: str, body: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def event(e: dict[str, Any]) -> ProviderEvent:
    name = str(e.get("event") or "")
    sg_id = str(e.get("sg_message_id") or "")
    reason = text(e.get("reason")) or text(e.get("response"))
    outcome = _SIMPLE.get(name, bounces.IGNORED)
    status, code = text(e.get("status"), 20), None
    if name == "bounce":
        permanent = str(e.get("type") or "bounce") != "blocked"
        outcome, status, code = bounce_outcome(permanent, status, None, reason)
    elif name == "dropped":
        outcome = _DROPPED.get((reason or "").strip().lower(), bounces.SOFT)
    names = {"type": "bounce_type", "bounce_classification": "classification", "attempt": "attempt"}
    extra: dict[str, Any] = {names[k]: str(e[k])[:200] for k in names if k in e}
    return ProviderEvent(
        key=f"sendgrid:{e.get('sg_event_id') or ''}",
        outcome=outcome if e.get("sg_event_id") else bounces.IGNORED,
        event=name,
        provider_ids=(sg_id.split(".", 1)[0],) if sg_id else (),
        message_ids=tuple(str(e[k]) for k in ("smtp-id",) if e.get(k)),
        recipient=text(e.get("email"), 320),
        status=status,
        code=code,
        diagnostic=reason,
        occurred_at=timestamp(e.get("timestamp")),
        extra=extra,
    )


class SendGrid:
    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        key = hooks.config.sendgrid_key
        self.key = load_key(key) if key else None

    async def handle(self, request: Request) -> Response:
        try:
            if self.key is None:
                raise Refused(404, "not configured (MAILCAST_SENDGRID_WEBHOOK_KEY)")
            signature = request.headers.get(SIGNATURE)
            stamp = request.headers.get(TIMESTAMP)
            if not signature or not stamp:
                raise Refused(401, "unsigned")
            body = await read_body(request)
            if not verify(self.key, stamp, body, signature):
                raise Refused(403, "bad signature")
            until = self.hooks.check_fresh(seconds(stamp), "timestamp")
            self.hooks.claim(f"sendgrid:{signature}", until)
            data = parse_json(body)
        except Refused as exc:
            return refusal("sendgrid", exc)
        items = data if isinstance(data, list) else [data]
        events = [event(e) for e in items if isinstance(e, dict)]
        return await self.hooks.accept("sendgrid", events, f"sendgrid:{signature}")
