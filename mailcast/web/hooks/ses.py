"""``POST /hooks/ses``: Amazon SES notifications, delivered by an SNS topic's HTTPS subscription.

Every post is an SNS message checked by :mod:`mailcast.web.hooks.sns` (a configured topic, a
valid signature, a ``Timestamp`` within ``MAILCAST_WEBHOOK_MAX_AGE``, a ``MessageId`` not seen
before). A ``SubscriptionConfirmation`` is confirmed; a ``Notification`` carries SES's JSON in
``Message``, either a notification (``notificationType``) or an event-publishing record
(``eventType``):

* ``Bounce``: ``bounceType`` Permanent (classified by each recipient's status and diagnostic;
  an address on SES's suppression list is a hard bounce) or Transient / Undetermined (soft);
* ``Complaint``; ``Delivery`` (a delivery confirmation); ``DeliveryDelay`` (a deferral).

The message is found by ``mail.messageId`` (the id SES gave it at send time), else by the
Message-ID in ``mail.commonHeaders`` (mailcast's own). One event per recipient, keyed by SES's
``feedbackId`` (the same bounce arriving through two topics counts once).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailcast.engagement import bounces
from mailcast.engagement.provider_events import ProviderEvent, bounce_outcome, timestamp
from mailcast.web.hooks.common import (
    NO_STORE,
    Hooks,
    Refused,
    log,
    obj,
    parse_json,
    read_body,
    refusal,
    text,
)
from mailcast.web.hooks.sns import Sns

_PROVIDER_SUPPRESSED = ("Suppressed", "OnAccountSuppressionList")


def _recipients(block: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = block.get(name)
    if not isinstance(items, list):
        return []
    return [i if isinstance(i, dict) else {"emailAddress": i} for i in items]


def _identity(mail: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(SES's message id, the Message-ID headers) of an SES ``mail`` object."""
    ses_id = text(mail.get("messageId"), 300)
    common = obj(mail.get("commonHeaders"))
    mids = [str(common["messageId"])] if common.get("messageId") else []
    for h in mail.get("headers") or []:
        if (
            isinstance(h, dict)
            and str(h.get("name", "")).lower() == "message-id"
            and h.get("value")
        ):
            mids.append(str(h["value"]))
    return ((ses_id,) if ses_id else ()), tuple(mids)


def events(notification: dict[str, Any]) -> list[ProviderEvent]:
    """The SES notification's events, one per recipient."""
    kind = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = obj(notification.get("mail"))
    ids, mids = _identity(mail)
    block_name = {"DeliveryDelay": "deliveryDelay"}.get(kind, kind[:1].lower() + kind[1:])
    block = notification.get(block_name)
    if not isinstance(block, dict):
        return []
    when = timestamp(block.get("timestamp"))
    feedback = str(block.get("feedbackId") or mail.get("messageId") or "")
    out: list[tuple[str, dict[str, Any], str | None, int | None, str | None, dict[str, Any]]] = []
    if kind == "Bounce":
        permanent = block.get("bounceType") == "Permanent"
        sub = str(block.get("bounceSubType") or "")
        for r in _recipients(block, "bouncedRecipients"):
            diagnostic = text(r.get("diagnosticCode"))
            outcome, status, code = bounce_outcome(permanent, text(r.get("status"), 20), None,
                                                   diagnostic)  # fmt: skip
            if permanent and sub in _PROVIDER_SUPPRESSED:
                outcome = bounces.HARD
            out.append((outcome, r, status, code, diagnostic, {"bounce_type": sub}))
    elif kind == "Complaint":
        extra = {"feedback_type": text(block.get("complaintFeedbackType"), 100)}
        for r in _recipients(block, "complainedRecipients"):
            out.append((bounces.COMPLAINT, r, None, None, None, extra))
    elif kind == "Delivery":
        for r in _recipients(block, "recipients"):
            out.append((bounces.DELIVERED, r, None, None, text(block.get("smtpResponse")), {}))
    elif kind == "DeliveryDelay":
        for r in _recipients(block, "delayedRecipients"):
            diagnostic = text(r.get("diagnosticCode"))
            out.append((bounces.DEFERRAL, r, text(r.get("status"), 20), None, diagnostic, {}))
    result = []
    for outcome, r, status, code, diagnostic, extra in out:
        address = text(r.get("emailAddress"), 320)
        result.append(
            ProviderEvent(
                key=f"ses:{kind}:{feedback}:{when.isoformat() if when else ''}:{address}",
                outcome=outcome,
                event=kind,
                provider_ids=ids,
                message_ids=mids,
                recipient=address,
                status=status,
                code=code,
                diagnostic=diagnostic,
                occurred_at=when,
                extra={k: v for k, v in extra.items() if v},
            )
        )
    return result


class Ses:
    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.sns = Sns(hooks.config)

    async def handle(self, request: Request) -> Response:
        try:
            if not self.hooks.config.ses_topics:
                raise Refused(404, "not configured (MAILCAST_SES_TOPIC_ARNS)")
            message = parse_json(await read_body(request))
            if not isinstance(message, dict):
                raise Refused(400, "not an SNS message")
            await self.sns.verify(message)
            stamp = timestamp(message.get("Timestamp"))
            until = self.hooks.check_fresh(stamp.timestamp() if stamp else None, "Timestamp")
            replay = f"sns:{message.get('MessageId')}"
            self.hooks.claim(replay, until)
            kind = message.get("Type")
            if kind == "SubscriptionConfirmation":
                try:
                    await self.sns.confirm(message)
                except Refused:
                    self.hooks.replays.release(replay)
                    raise
                log.info("ses webhook: subscribed to %s", text(message.get("TopicArn"), 300))
                return JSONResponse({"confirmed": True}, headers=NO_STORE)
            if kind != "Notification":  # UnsubscribeConfirmation: nothing to do
                return JSONResponse({"received": 0}, headers=NO_STORE)
            try:
                notification = json.loads(str(message.get("Message") or ""))
            except ValueError:
                notification = None
        except Refused as exc:
            return refusal("ses", exc)
        found = events(notification) if isinstance(notification, dict) else []
        return await self.hooks.accept("ses", found, replay)
