"""SendGrid's v3 Mail Send API (``POST /v3/mail/send``, JSON, ``Authorization: Bearer KEY``).

The API takes a message as fields, so the MIME mailcast built is taken apart
(``message_parts``): from, the one recipient in one personalization, subject, reply-to, the text
then the HTML content, attachments (inline ones with their content id) and every other header
(List-Unsubscribe, List-Unsubscribe-Post, Message-ID, Date, X-...) in ``headers``, except those
SendGrid reserves. A 202 is the acceptance; its ``X-Message-Id`` header is the provider's id
(the event webhook's ``sg_message_id`` starts with it).

URL form: ``sendgrid://[?region=eu][&timeout=SECONDS][&base_url=URL]``; the key comes from the
block or ``MAILCAST_SENDGRID_API_KEY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from mailcast.settings import Settings
from mailcast.transport import api_config as cfg
from mailcast.transport.base import Reply
from mailcast.transport.http_api import ApiRequest, ApiTransport, json_body
from mailcast.transport.message_parts import FIELD_HEADERS, MessageParts, parse_message

__all__ = ["SendGridConfig", "SendGridTransport", "setup_from_url"]

BASE_URLS = {"global": "https://api.sendgrid.com", "eu": "https://api.eu.sendgrid.com"}
# headers SendGrid refuses in ``headers`` (it sets them itself), besides those sent as fields
RESERVED = FIELD_HEADERS | {"x-sg-id", "x-sg-eid", "received", "dkim-signature"}
_HINT = "use sendgrid://?region=eu (or global), options timeout=SECONDS and base_url=URL"
_KEY_HINT = "save it in a SendGrid block or set MAILCAST_SENDGRID_API_KEY"


@dataclass(frozen=True)  # the SecretStr fields show as '**********'
class SendGridConfig(cfg.ApiSetup):
    api_key: SecretStr
    endpoint: cfg.ApiEndpoint

    @classmethod
    def create(
        cls,
        api_key: SecretStr | str | None,
        *,
        region: str = "global",
        base_url: str | None = None,
        timeout: float = cfg.DEFAULT_TIMEOUT,
    ) -> SendGridConfig:
        default = cfg.choose(region, BASE_URLS, "SendGrid region", "sendgrid", _HINT)
        key = cfg.secret(api_key, "SendGrid API key", "sendgrid", _KEY_HINT)
        return cls(key, cfg.ApiEndpoint("sendgrid", base_url or default, timeout))

    @classmethod
    def from_url(cls, url: str, api_key: SecretStr | str | None) -> SendGridConfig:
        form = cfg.UrlForm.parse(url, "sendgrid", ("region",), _HINT).no_name(_HINT)
        region = form.options.get("region", "global")
        return cls.create(api_key, region=region, base_url=form.base_url, timeout=form.timeout)

    def new_transport(self) -> SendGridTransport:
        return SendGridTransport(self)


def _address(email: str, name: str) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def mail_send_body(parts: MessageParts, recipient: str) -> dict[str, Any]:
    """The v3 Mail Send JSON of one message to ``recipient``."""
    body: dict[str, Any] = {
        "personalizations": [{"to": [_address(recipient, parts.to_name)]}],
        "from": _address(parts.from_email, parts.from_name),
        "subject": parts.subject,
    }
    if len(parts.reply_to) == 1:
        body["reply_to"] = _address(parts.reply_to[0][1], parts.reply_to[0][0])
    elif parts.reply_to:
        body["reply_to_list"] = [_address(a, n) for n, a in parts.reply_to]
    content = []
    if parts.text is not None:  # text/plain must come first
        content.append({"type": "text/plain", "value": parts.text})
    if parts.html is not None:
        content.append({"type": "text/html", "value": parts.html})
    body["content"] = content
    if parts.attachments:
        attachments = []
        for a in parts.attachments:
            item = {"content": a.base64, "filename": a.filename, "type": a.content_type}
            if a.content_id:
                item |= {"disposition": "inline", "content_id": a.content_id}
            else:
                item["disposition"] = "attachment"
            attachments.append(item)
        body["attachments"] = attachments
    headers = parts.extra_headers(RESERVED)
    if headers:
        body["headers"] = headers
    return body


class SendGridTransport(ApiTransport[SendGridConfig]):
    auth_hint = (
        "check the SendGrid API key (its block or MAILCAST_SENDGRID_API_KEY): it needs the"
        " Mail Send permission, and the From address must be a verified sender or domain"
    )

    def request(self, sender: str, recipient: str, message: bytes) -> ApiRequest:
        body = mail_send_body(parse_message(message, self.where), recipient)
        bearer = f"Bearer {self.config.api_key.get_secret_value()}"
        return ApiRequest.json("/v3/mail/send", body, headers={"Authorization": bearer})

    def accepted(self, response: httpx.Response) -> Reply:
        return Reply(
            response.status_code,
            response.reason_phrase or "Accepted",
            provider_message_id=response.headers.get("X-Message-Id"),
        )

    def error_text(self, response: httpx.Response) -> str:
        """SendGrid's ``{"errors": [{"message", "field", "help"}]}``."""
        body = json_body(response)
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            texts = []
            for e in errors:
                if isinstance(e, dict):
                    where = f" ({e['field']})" if e.get("field") else ""
                    texts.append(f"{e.get('message', '')}{where}")
            return "; ".join(texts)
        return super().error_text(response)


def setup_from_url(url: str, settings: Settings) -> SendGridConfig:
    """``sendgrid://...`` with the key from ``MAILCAST_SENDGRID_API_KEY`` (the registry's
    entry)."""
    return SendGridConfig.from_url(url, settings.sendgrid_api_key)
