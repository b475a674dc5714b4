"""The Gmail API as a transport, for accounts that cannot use SMTP: each message is uploaded
as it is (the raw MIME mailcast builds, ``users.messages.send`` with ``uploadType=media``)
with a Bearer token from a Google refresh token.

Gmail sends to the To/Cc/Bcc headers of the message (mailcast's To: is the row's address)
from the authorized account; the envelope sender (a VERP return path) cannot be set.

Outcomes: 200 → ``Reply`` with Gmail's message id; 429 or 403 ``rateLimitExceeded`` /
``userRateLimitExceeded`` / ``dailyLimitExceeded`` → throttled (the run slows down); 5xx →
temporary; 401 → a new token and once more, then ``AuthError``; other 403 (a missing scope,
Gmail API disabled) → ``AuthError``; other 4xx → permanent. No answer after the whole request
was sent (a read timeout, a dropped connection) → ``ConnectionLost(maybe_delivered=True)``:
Gmail may have sent it, the row is ``unknown``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx

from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    RefusalKind,
    SpecError,
)
from mailcast.redact import redact_url
from mailcast.transport.base import Reply
from mailcast.transport.http_client import shared_client
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


@dataclass(frozen=True)
class GmailConfig:
    """Which account and how: ``user_id`` ``me`` is the account the token belongs to."""

    oauth2: TokenProvider = field(repr=False)
    user_id: str = "me"
    base_url: str = GMAIL_API
    timeout: float = 30.0

    @property
    def where(self) -> str:
        host = httpx.URL(self.base_url).netloc.decode() or self.base_url
        return f"gmail {self.user_id} via {host}"

    @property
    def send_url(self) -> str:
        user = quote(self.user_id, safe="@")
        return f"{self.base_url.rstrip('/')}/upload/gmail/v1/users/{user}/messages/send"

    def check(self) -> None:
        """Nothing more to check without the network (the URL or block was read)."""

    def new_transport(self) -> GmailTransport:
        """A new transport (``factory.TransportSetup``); they share the process's client."""
        return GmailTransport(self)


class GmailTransport:
    """Sends through the Gmail API over the process's shared HTTP client (keep-alive); the
    ``open``/``close`` of a connection cost nothing. Safe to use from one thread at a time
    like every transport (the shared client and token provider are thread-safe)."""

    def __init__(self, config: GmailConfig) -> None:
        self.config = config
        self.where = config.where

    def __repr__(self) -> str:
        return f"GmailTransport({self.where!r})"

    def open(self) -> None:
        """Get an access token now: credentials the token endpoint refuses stop the run before
        any message (AuthError), an endpoint that cannot be reached is a ConnectError."""
        self.config.oauth2.token()

    def close(self) -> None:
        pass

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        """Upload ``message`` (its headers name the recipients); return Gmail's id for it."""
        for attempt in (1, 2):
            token = self.config.oauth2.token()
            response = self._post(token, message)
            if response.status_code == 401 and attempt == 1:
                self.config.oauth2.invalidate(token)
                log.info("%s refused the access token (401); asking for a new one", self.where)
                continue
            return self._outcome(response)
        raise AssertionError("unreachable")

    def _post(self, token: str, message: bytes) -> httpx.Response:
        cfg = self.config
        request = shared_client().build_request(
            "POST",
            cfg.send_url,
            params={"uploadType": "media"},
            content=message,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "message/rfc822"},
            timeout=cfg.timeout,
        )
        try:
            return shared_client().send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # nothing of the request went out: the engine waits for the API and sends it then
            raise ConnectError(
                f"cannot connect: {type(exc).__name__}: {exc}", where=self.where
            ) from None
        except httpx.WriteTimeout:
            raise ConnectionLost("timed out sending the request", where=self.where) from None
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            # the whole request may have been sent and acted on: only the answer is missing
            detail = "timed out" if isinstance(exc, httpx.ReadTimeout) else str(exc)
            raise ConnectionLost(
                f"no answer to the request: {detail or type(exc).__name__}",
                where=self.where,
                maybe_delivered=True,
            ) from None
        except httpx.HTTPError as exc:
            raise ConnectionLost(
                f"{type(exc).__name__}: {exc}", where=self.where, maybe_delivered=True
            ) from None

    def _outcome(self, response: httpx.Response) -> Reply:
        status = response.status_code
        body = _json(response)
        if status == 200 and isinstance(body.get("id"), str):
            return Reply(200, f"OK id={body['id']}", provider_message_id=body["id"])
        if status == 200:  # accepted, but no id in the answer
            return Reply(200, "OK (no id in the answer)")
        message, reasons = _error(body, response)
        text = f"{message} ({', '.join(reasons)})" if reasons else message
        if status == 429 or (status == 403 and reasons & _THROTTLE_REASONS):
            kind = RefusalKind.THROTTLED
        elif status in (401, 403):
            raise AuthError(
                f"the Gmail API refused the access token: {status} {text}",
                where=self.where,
                hint=_HINT,
            )
        elif status >= 500 or status in (408, 409):
            kind = RefusalKind.TEMPORARY
        else:
            kind = RefusalKind.PERMANENT
        raise DeliveryRefused(status, text, kind=kind, where=self.where)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error(body: dict[str, Any], response: httpx.Response) -> tuple[str, set[str]]:
    """Google's error answer: ``{"error": {"code", "message", "errors": [{"reason"}]}}``."""
    error = body.get("error")
    if not isinstance(error, dict):
        text = response.text[:200].strip() if response.content else ""
        return (text or response.reason_phrase or "no answer"), set()
    reasons = {
        str(item.get("reason"))
        for item in error.get("errors") or ()
        if isinstance(item, dict) and item.get("reason")
    }
    return str(error.get("message") or json.dumps(error)[:200]), reasons


_URL_HINT = (
    "use gmail://me?oauth2=NAME, NAME a saved Google OAuth2 block (options: user=ADDRESS,"
    " timeout=SECONDS); or --transport-block with a Gmail API block"
)


def setup_from_url(url: str, settings: Settings | None = None) -> GmailConfig:
    """The transport registry's entry: ``gmail://me?oauth2=NAME[&timeout=30]``, NAME a saved
    Google OAuth2 block (the URL holds no secret)."""
    shown = redact_url(url)

    def bad(problem: str) -> SpecError:
        return SpecError(
            f"invalid Gmail URL {shown!r}: {problem}", where="--transport", hint=_URL_HINT
        )

    try:
        parts = urlsplit(url.strip())
        options = dict(parse_qsl(parts.query, strict_parsing=bool(parts.query)))
    except ValueError:
        raise bad("cannot parse it") from None
    if parts.scheme.lower() != "gmail":
        raise bad("it must start with gmail://")
    unknown = set(options) - {"oauth2", "user", "timeout"}
    if unknown:
        raise bad(f"unknown option {sorted(unknown)[0]!r} (known: oauth2, user, timeout)")
    if parts.path not in ("", "/"):
        raise bad(f"unexpected path {parts.path!r}")
    name = options.get("oauth2", "")
    if not name:
        raise bad("no credentials: add ?oauth2=NAME (a saved Google OAuth2 block)")
    try:
        timeout = float(options.get("timeout", "30"))
    except ValueError:
        raise bad(f"timeout must be a number of seconds, not {options['timeout']!r}") from None
    if not timeout > 0:
        raise bad("timeout must be > 0")
    user = options.get("user") or unquote(parts.netloc) or "me"
    from mailcast.blocks.oauth2 import GoogleOAuth2
    from mailcast.transport.factory import load_block

    credentials = cast(GoogleOAuth2, load_block(GoogleOAuth2, name))
    return GmailConfig(oauth2=credentials.token_provider(), user_id=user, timeout=timeout)
