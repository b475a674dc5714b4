"""The Gmail API as a transport, for accounts that cannot use SMTP: each message is uploaded
as it is (the raw MIME mailcast builds, ``users.messages.send`` with ``uploadType=media``)
with a Bearer token from a Google refresh token (``oauth2.GoogleToken``), over the process's
shared HTTP client (``http_api``).

Gmail sends to the To/Cc/Bcc headers of the message (mailcast's To: is the row's address)
from the authorized account; the envelope sender (a VERP return path) cannot be set.

Outcomes (``http_api.ApiTransport``): 200 → ``Reply`` with Gmail's message id; 429 or a
``rateLimitExceeded`` / ``userRateLimitExceeded`` / ``dailyLimitExceeded`` reason → throttled
(the run slows down); 5xx → temporary; 401 → a new token and once more, then ``AuthError``, like
any other 403 (a missing scope, the Gmail API disabled); other 4xx → permanent. No answer after
the whole request was sent → ``ConnectionLost(maybe_delivered=True)``: the row is ``unknown``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, cast
from urllib.parse import quote

import httpx

from mailcast.errors import DeliveryRefused, RefusalKind, SpecError
from mailcast.transport.api_config import ApiEndpoint, ApiSetup, UrlForm
from mailcast.transport.base import Reply
from mailcast.transport.http_api import ApiRequest, ApiTransport, json_body
from mailcast.transport.oauth2 import TokenProvider

if TYPE_CHECKING:
    from mailcast.settings import Settings

__all__ = ["GMAIL_API", "GmailConfig", "GmailTransport", "setup_from_url"]

log = logging.getLogger(__name__)

GMAIL_API = "https://gmail.googleapis.com"
_THROTTLE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "dailyLimitExceeded"})
_HINT = (
    "the refresh token needs the gmail.send (or https://mail.google.com/) scope and the Gmail"
    " API must be enabled for the OAuth client's project (README, Gmail API); then `mailcast"
    " resume RUN_ID` (no recipient was marked failed)"
)
_URL_HINT = (
    "use gmail://me?oauth2=NAME, NAME a saved Google OAuth2 block (options: user=ADDRESS,"
    " timeout=SECONDS); or --transport-block with a Gmail API block"
)


@dataclass(frozen=True)
class GmailConfig(ApiSetup):
    """Which account and how: ``user_id`` ``me`` is the account the token belongs to."""

    oauth2: TokenProvider = field(repr=False)
    endpoint: ApiEndpoint = field(default_factory=lambda: ApiEndpoint("gmail", GMAIL_API))
    user_id: str = "me"

    def new_transport(self) -> GmailTransport:
        """A new transport (``factory.TransportSetup``); they share the process's client."""
        return GmailTransport(self)


class GmailTransport(ApiTransport[GmailConfig]):
    """One engine connection to the Gmail API (the HTTP connections are the process's)."""

    auth_hint = _HINT

    def open(self) -> None:
        """Get an access token now: credentials the token endpoint refuses stop the run before
        any message (AuthError), an endpoint that cannot be reached is a ConnectError."""
        super().open()
        self.config.oauth2.token()

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        """Upload ``message`` (its headers name the recipients); return Gmail's id for it."""
        self.open()
        user = quote(self.config.user_id, safe="@")
        path = f"/upload/gmail/v1/users/{user}/messages/send?uploadType=media"
        for attempt in (1, 2):
            token = self.config.oauth2.token()
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"}
            response = self._post(ApiRequest(path, headers=headers, content=message))
            if response.status_code != 401 or attempt == 2:
                break
            self.config.oauth2.invalidate(token)
            log.info("%s refused the access token (401); asking for a new one", self.where)
        if 200 <= response.status_code < 300:
            return self.accepted(response)
        self.refuse(response)

    def accepted(self, response: httpx.Response) -> Reply:
        body = json_body(response)
        mid = body.get("id") if isinstance(body, dict) else None
        if isinstance(mid, str):
            return Reply(response.status_code, f"OK id={mid}", provider_message_id=mid)
        return Reply(response.status_code, "OK (no id in the answer)")

    def error_text(self, response: httpx.Response) -> str:
        """Google's error answer: ``{"error": {"code", "message", "errors": [{"reason"}]}}``."""
        message, reasons = _error(response)
        return f"{message} ({', '.join(sorted(reasons))})" if reasons else message

    def refuse(self, response: httpx.Response) -> NoReturn:
        if response.status_code == 403 and _error(response)[1] & _THROTTLE_REASONS:
            text = self.error_text(response)
            raise DeliveryRefused(403, text, kind=RefusalKind.THROTTLED, where=self.where)
        super().refuse(response)


def _error(response: httpx.Response) -> tuple[str, set[str]]:
    body = json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return response.text[:200].strip() or response.reason_phrase, set()
    reasons = {
        str(item["reason"])
        for item in error.get("errors") or ()
        if isinstance(item, dict) and item.get("reason")
    }
    return str(error.get("message") or response.reason_phrase), reasons


def setup_from_url(url: str, settings: Settings | None = None) -> GmailConfig:
    """The transport registry's entry: ``gmail://me?oauth2=NAME[&user=ADDRESS][&timeout=30]``,
    NAME a saved Google OAuth2 block (the URL holds no secret)."""
    form = UrlForm.parse(url.strip(), "gmail", ("oauth2", "user"), _URL_HINT)
    name = form.options.get("oauth2", "")
    if not name:
        raise SpecError(
            "no credentials in the gmail:// URL: add ?oauth2=NAME (a saved Google OAuth2 block)",
            where="gmail",
            hint=_URL_HINT,
        )
    endpoint = ApiEndpoint("gmail", form.base_url or GMAIL_API, timeout=form.timeout)
    from mailcast.blocks.oauth2 import GoogleOAuth2
    from mailcast.transport.factory import load_block

    credentials = cast(GoogleOAuth2, load_block(GoogleOAuth2, name))
    user = form.options.get("user") or form.name or "me"
    return GmailConfig(oauth2=credentials.token_provider(), endpoint=endpoint, user_id=user)
