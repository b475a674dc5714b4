"""Mailjet's Send API v3.1 (``POST /v3.1/send``, JSON, HTTP Basic with the API key and the
secret key).

Like SendGrid, the API takes a message as fields: the MIME mailcast built is taken apart
(``message_parts``) into From, To, ReplyTo, Subject, TextPart, HTMLPart, Attachments,
InlinedAttachments and Headers (every other header, except those Mailjet reserves). The answer
has a status per message; ``To[0].MessageID`` of a "success" is the provider's id (the
``MessageID`` of Mailjet's events). ``sandbox`` sets ``SandboxMode``: Mailjet checks the request
and answers as usual, and delivers nothing.

URL form: ``mailjet://[?sandbox=true][&timeout=SECONDS][&base_url=URL]``; the keys come from the
block or ``MAILCAST_MAILJET_API_KEY`` and ``MAILCAST_MAILJET_SECRET_KEY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from mailcast.errors import DeliveryRefused, RefusalKind
from mailcast.settings import Settings
from mailcast.transport import api_config as cfg
from mailcast.transport.base import Reply
from mailcast.transport.http_api import ApiRequest, ApiTransport, basic_auth, json_body
from mailcast.transport.message_parts import FIELD_HEADERS, MessageParts, parse_message

__all__ = ["MailjetConfig", "MailjetTransport", "setup_from_url"]

BASE_URL = "https://api.mailjet.com"
# headers Mailjet will not take in ``Headers`` (it sets them, or they have fields of their own)
RESERVED = FIELD_HEADERS | {
    "sender",
    "return-path",
    "delivered-to",
    "dkim-signature",
    "domainkey-signature",
    "domainkey-status",
    "received-spf",
    "authentication-results",
    "received",
    "user-agent",
    "x-mailer",
    "x-mailjet-prio",
    "x-mailjet-debug",
    "x-mailjet-campaign",
    "x-mailjet-deduplicatecampaign",
    "x-mailjet-trackopen",
    "x-mailjet-trackclick",
    "x-mj-customid",
    "x-mj-eventpayload",
    "x-mj-vars",
    "x-mj-templatelanguage",
    "x-mj-templateid",
    "x-mj-templateerrordeliver",
    "x-mj-templateerrorreporting",
}
_HINT = "use mailjet://?sandbox=false, options timeout=SECONDS and base_url=URL"
_KEY_HINT = (
    "save them in a Mailjet block or set MAILCAST_MAILJET_API_KEY and MAILCAST_MAILJET_SECRET_KEY"
)


@dataclass(frozen=True)  # the SecretStr fields show as '**********'
class MailjetConfig(cfg.ApiSetup):
    api_key: SecretStr
    secret_key: SecretStr
    endpoint: cfg.ApiEndpoint
    sandbox: bool = False

    @classmethod
    def create(
        cls,
        api_key: SecretStr | str | None,
        secret_key: SecretStr | str | None,
        *,
        sandbox: bool = False,
        base_url: str | None = None,
        timeout: float = cfg.DEFAULT_TIMEOUT,
    ) -> MailjetConfig:
        key = cfg.secret(api_key, "Mailjet API key", "mailjet", _KEY_HINT)
        secret = cfg.secret(secret_key, "Mailjet secret key", "mailjet", _KEY_HINT)
        return cls(key, secret, cfg.ApiEndpoint("mailjet", base_url or BASE_URL, timeout), sandbox)

    @classmethod
    def from_url(
        cls, url: str, api_key: SecretStr | str | None, secret_key: SecretStr | str | None
    ) -> MailjetConfig:
        form = cfg.UrlForm.parse(url, "mailjet", ("sandbox",), _HINT).no_name(_HINT)
        return cls.create(
            api_key,
            secret_key,
            sandbox=form.flag("sandbox"),
            base_url=form.base_url,
            timeout=form.timeout,
        )

    def new_transport(self) -> MailjetTransport:
        return MailjetTransport(self)


def _contact(email: str, name: str) -> dict[str, str]:
    return {"Email": email, "Name": name} if name else {"Email": email}


def send_body(parts: MessageParts, recipient: str, *, sandbox: bool) -> dict[str, Any]:
    """The v3.1 Send JSON of one message to ``recipient``."""
    message: dict[str, Any] = {
        "From": _contact(parts.from_email, parts.from_name),
        "To": [_contact(recipient, parts.to_name)],
        "Subject": parts.subject,
    }
    if parts.reply_to:  # Mailjet takes one Reply-To address
        message["ReplyTo"] = _contact(parts.reply_to[0][1], parts.reply_to[0][0])
    if parts.text is not None:
        message["TextPart"] = parts.text
    if parts.html is not None:
        message["HTMLPart"] = parts.html
    attached = [a for a in parts.attachments if not a.content_id]
    inlined = [a for a in parts.attachments if a.content_id]
    if attached:
        message["Attachments"] = [
            {"ContentType": a.content_type, "Filename": a.filename, "Base64Content": a.base64}
            for a in attached
        ]
    if inlined:
        message["InlinedAttachments"] = [
            {
                "ContentType": a.content_type,
                "Filename": a.filename,
                "ContentID": a.content_id,
                "Base64Content": a.base64,
            }
            for a in inlined
        ]
    headers = parts.extra_headers(RESERVED)
    if headers:
        message["Headers"] = headers
    body: dict[str, Any] = {"Messages": [message]}
    if sandbox:
        body["SandboxMode"] = True
    return body


def _errors_text(errors: Any) -> str:
    """Mailjet's ``Errors`` list: ``ErrorCode: ErrorMessage (ErrorRelatedTo)`` each."""
    texts = []
    for e in errors if isinstance(errors, list) else []:
        if isinstance(e, dict):
            related = ", ".join(str(r) for r in e.get("ErrorRelatedTo") or [])
            code = f"{e['ErrorCode']}: " if e.get("ErrorCode") else ""
            texts.append(
                f"{code}{e.get('ErrorMessage', '')}" + (f" ({related})" if related else "")
            )
    return "; ".join(texts)


class MailjetTransport(ApiTransport[MailjetConfig]):
    auth_hint = (
        "check the Mailjet API key and secret key (their block or MAILCAST_MAILJET_API_KEY and"
        " MAILCAST_MAILJET_SECRET_KEY), and that the From address is a validated sender"
    )

    def request(self, sender: str, recipient: str, message: bytes) -> ApiRequest:
        body = send_body(parse_message(message, self.where), recipient, sandbox=self.config.sandbox)
        auth = basic_auth(
            self.config.api_key.get_secret_value(), self.config.secret_key.get_secret_value()
        )
        return ApiRequest.json("/v3.1/send", body, headers={"Authorization": auth})

    def accepted(self, response: httpx.Response) -> Reply:
        body = json_body(response)
        messages = body.get("Messages") if isinstance(body, dict) else None
        result = messages[0] if isinstance(messages, list) and messages else {}
        if not isinstance(result, dict) or result.get("Status") != "success":
            # a 2xx without a success for our message: not accepted
            text = _errors_text(result.get("Errors") if isinstance(result, dict) else None)
            raise DeliveryRefused(
                response.status_code,
                text or f"no success in the answer: {response.text[:200]}",
                kind=RefusalKind.PERMANENT,
                where=self.where,
            )
        to = result.get("To") or [{}]
        mid = to[0].get("MessageID") if isinstance(to[0], dict) else None
        return Reply(
            response.status_code,
            "success" + (" (sandbox)" if self.config.sandbox else ""),
            provider_message_id=str(mid) if mid not in (None, "") else None,
        )

    def error_text(self, response: httpx.Response) -> str:
        body = json_body(response)
        if isinstance(body, dict) and isinstance(body.get("Messages"), list):
            texts = [_errors_text(m.get("Errors")) for m in body["Messages"] if isinstance(m, dict)]
            if any(texts):
                return "; ".join(t for t in texts if t)
        return super().error_text(response)


def setup_from_url(url: str, settings: Settings) -> MailjetConfig:
    """``mailjet://...`` with the keys from ``MAILCAST_MAILJET_API_KEY`` and
    ``MAILCAST_MAILJET_SECRET_KEY`` (the registry's entry)."""
    return MailjetConfig.from_url(url, settings.mailjet_api_key, settings.mailjet_secret_key)
