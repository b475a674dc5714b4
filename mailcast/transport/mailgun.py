"""Mailgun's MIME upload (``POST /v3/{domain}/messages.mime``, multipart/form-data: ``to`` and
the ``message`` file; HTTP Basic ``api:KEY``).

Mailgun takes the MIME mailcast built as it is (headers, parts, a DKIM signature), so nothing is
taken apart. A 200 answers ``{"id": "<...>", "message": "Queued. Thank you."}``; the id, without
its angle brackets, is the provider's id (the ``message-id`` of Mailgun's events).

URL form: ``mailgun://DOMAIN[?region=eu][&timeout=SECONDS][&base_url=URL]``; the key comes from
the block or ``MAILCAST_MAILGUN_API_KEY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from mailcast.errors import SpecError
from mailcast.settings import Settings
from mailcast.transport import api_config as cfg
from mailcast.transport.base import Reply
from mailcast.transport.http_api import ApiRequest, ApiTransport, basic_auth, json_body

__all__ = ["MailgunConfig", "MailgunTransport", "setup_from_url"]

BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
_HINT = (
    "use mailgun://DOMAIN?region=eu (or us; the region the domain was created in), options"
    " timeout=SECONDS and base_url=URL"
)
_KEY_HINT = "save it in a Mailgun block or set MAILCAST_MAILGUN_API_KEY"


@dataclass(frozen=True)  # the SecretStr fields show as '**********'
class MailgunConfig(cfg.ApiSetup):
    api_key: SecretStr
    domain: str
    endpoint: cfg.ApiEndpoint

    @classmethod
    def create(
        cls,
        api_key: SecretStr | str | None,
        domain: str,
        *,
        region: str = "us",
        base_url: str | None = None,
        timeout: float = cfg.DEFAULT_TIMEOUT,
    ) -> MailgunConfig:
        default = cfg.choose(region, BASE_URLS, "Mailgun region", "mailgun", _HINT)
        if not domain or "/" in domain or any(c.isspace() for c in domain):
            raise SpecError(f"not a sending domain: {domain!r}", where="mailgun", hint=_HINT)
        key = cfg.secret(api_key, "Mailgun API key", "mailgun", _KEY_HINT)
        return cls(key, domain, cfg.ApiEndpoint("mailgun", base_url or default, timeout))

    @classmethod
    def from_url(cls, url: str, api_key: SecretStr | str | None) -> MailgunConfig:
        form = cfg.UrlForm.parse(url, "mailgun", ("region",), _HINT)
        region = form.options.get("region", "us")
        return cls.create(
            api_key, form.name, region=region, base_url=form.base_url, timeout=form.timeout
        )

    def new_transport(self) -> MailgunTransport:
        return MailgunTransport(self)


class MailgunTransport(ApiTransport[MailgunConfig]):
    auth_hint = (
        "check the Mailgun API key (its block or MAILCAST_MAILGUN_API_KEY: a domain sending key"
        " for this domain, or the account's key), the domain and its region (us or eu)"
    )

    def __init__(self, config: MailgunConfig) -> None:
        super().__init__(config)
        self.where = f"{config.endpoint.where} ({config.domain})"
        self._path = f"/v3/{quote(config.domain, safe='')}/messages.mime"

    def request(self, sender: str, recipient: str, message: bytes) -> ApiRequest:
        auth = basic_auth("api", self.config.api_key.get_secret_value())
        return ApiRequest(
            self._path,
            headers={"Authorization": auth},
            data={"to": recipient},
            files={"message": ("message.mime", message, "message/rfc822")},
        )

    def accepted(self, response: httpx.Response) -> Reply:
        body = json_body(response)
        body = body if isinstance(body, dict) else {}
        mid = str(body.get("id") or "").strip().strip("<>") or None
        text = str(body.get("message") or "OK")
        return Reply(response.status_code, text, provider_message_id=mid)


def setup_from_url(url: str, settings: Settings) -> MailgunConfig:
    """``mailgun://DOMAIN...`` with the key from ``MAILCAST_MAILGUN_API_KEY`` (the registry's
    entry)."""
    return MailgunConfig.from_url(url, settings.mailgun_api_key)
