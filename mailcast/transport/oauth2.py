"""OAuth2 access tokens for XOAUTH2 over SMTP and for the Gmail API.

A ``TokenProvider`` hands out the current access token of one set of credentials:

- ``MicrosoftToken``: Microsoft 365 (Entra ID) through msal, either the app's own token
  (client credentials, scope ``https://outlook.office365.com/.default``) or a user's refresh
  token (scope ``https://outlook.office.com/SMTP.Send``);
- ``GoogleToken``: Google (Gmail) from a refresh token, posted to Google's token endpoint.

One provider per credentials per worker process (``shared``), used by every connection and
thread: a token is requested when there is none, shortly before it expires (a fifth of its
lifetime, at most five minutes, before), and when a server refused it (``invalidate``: the
transport asks again once, then the refusal stops the run). The token endpoint or authority is
configurable (the tests run their own on loopback).

Secrets (client secrets, refresh tokens, access tokens) are kept as ``SecretStr`` and never
put into a log line, an error, a repr or the ledger. The token endpoint's refusal of the
credentials (``invalid_grant``: a revoked or expired refresh token, ``invalid_client``) is an
``AuthError``: the run stops, nobody is marked failed. An endpoint that cannot be reached or
answers 5xx is a ``ConnectError``: the engine waits and tries again, like a server that is down.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from mailcast.errors import AuthError, ConnectError

__all__ = [
    "GOOGLE_TOKEN_URI",
    "MICROSOFT_AUTHORITY",
    "GoogleToken",
    "MicrosoftToken",
    "TokenProvider",
    "shared",
    "xoauth2",
]

log = logging.getLogger(__name__)

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"  # client credentials
MICROSOFT_USER_SCOPE = "https://outlook.office.com/SMTP.Send"  # a user's refresh token
MAX_MARGIN = 300.0  # seconds before expiry a token is replaced, at most
_RESUME = "then `mailcast resume RUN_ID` (no recipient was marked failed)"


def xoauth2(user: str, token: str) -> str:
    """The XOAUTH2 initial response, before base64 (Google's and Microsoft's documented form)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


class TokenProvider:
    """The access tokens of one set of credentials; thread-safe. Subclasses implement
    ``_fetch`` (a new token and its lifetime in seconds) and name ``where`` (the endpoint)."""

    kind = "OAuth2"
    where = ""
    hint = ""  # what to do when the endpoint refuses the credentials
    smtp_hint = ""  # what to do when an SMTP server refuses the tokens

    def __init__(self, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.requests = 0  # tokens requested from the endpoint by this process
        self._lock = threading.Lock()
        self._token: SecretStr | None = None
        self._renew_at = 0.0  # time.monotonic()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    def describe(self) -> str:
        return f"{self.kind} via {self.where}"

    @property
    def key(self) -> str:
        """Identifies the credentials (a digest: equal for equal credentials, secret-free)."""
        return hashlib.sha256(
            json.dumps([type(self).__name__, *self._identity()]).encode()
        ).hexdigest()

    def token(self) -> str:
        """A token valid for a while yet: the cached one, or a new one from the endpoint."""
        with self._lock:
            now = time.monotonic()
            if self._token is None or now >= self._renew_at:
                value, lifetime = self._fetch()
                lifetime = max(float(lifetime), 1.0)
                self._token = SecretStr(value)
                self._renew_at = now + lifetime - min(MAX_MARGIN, lifetime / 5)
                self.requests += 1
                log.debug("new access token from %s, valid %.0fs", self.where, lifetime)
            return self._token.get_secret_value()

    def invalidate(self, token: str) -> None:
        """A server refused ``token``: the next ``token()`` asks the endpoint for a new one
        (unless another connection already did)."""
        with self._lock:
            if self._token is not None and self._token.get_secret_value() == token:
                self._token = None
                self._forget()

    # -- for subclasses ----------------------------------------------------------------------

    def _fetch(self) -> tuple[str, float]:
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop any token cached below this class (msal keeps its own)."""

    def _identity(self) -> list[str]:
        raise NotImplementedError

    def _secrets(self) -> list[str]:
        return []

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text[:300]

    def _refused(self, error: str, description: str) -> AuthError:
        detail = f" ({self._scrub(description)})" if description else ""
        return AuthError(
            f"{self.kind}: the token endpoint refused the credentials: {self._scrub(error)}"
            f"{detail}",
            where=self.where,
            hint=self.hint,
        )

    def _unreachable(self, problem: str) -> ConnectError:
        return ConnectError(
            f"{self.kind}: no access token: {self._scrub(problem)}",
            where=self.where,
            hint="is the token endpoint reachable from this worker? The run waits and tries "
            "again within max_retry_seconds",
        )


def _host(url: str) -> str:
    try:
        parts = urlsplit(url)
        return parts.netloc or url
    except ValueError:
        return url


def _lifetime(payload: dict[str, Any]) -> float:
    try:
        return float(payload.get("expires_in", 3600))
    except (TypeError, ValueError):
        return 3600.0


class GoogleToken(TokenProvider):
    """Google: an access token from a refresh token (``grant_type=refresh_token``)."""

    kind = "Google OAuth2"

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: SecretStr,
        refresh_token: SecretStr,
        token_uri: str = GOOGLE_TOKEN_URI,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.token_uri = token_uri
        self.where = _host(token_uri)
        self.hint = (
            "the refresh token was revoked or expired, or the client id/secret are wrong: create"
            " a new refresh token (README, Gmail) and save it in the Google OAuth2 block; "
            + _RESUME
        )
        self.smtp_hint = (
            "the refresh token needs the https://mail.google.com/ scope, and the SMTP user must"
            " be the account that granted it (README, Gmail); " + _RESUME
        )

    def _identity(self) -> list[str]:
        secrets = [s.get_secret_value() for s in (self._client_secret, self._refresh_token)]
        return [self.token_uri, self.client_id, *secrets]

    def _secrets(self) -> list[str]:
        return [self._client_secret.get_secret_value(), self._refresh_token.get_secret_value()]

    def _fetch(self) -> tuple[str, float]:
        import httpx  # imported when a token is needed: the CLI's other commands stay fast

        from mailcast.transport.http_api import shared_client

        form = {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self._client_secret.get_secret_value(),
            "refresh_token": self._refresh_token.get_secret_value(),
        }
        try:
            client = shared_client(self.timeout, True)
            response = client.post(self.token_uri, data=form, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise self._unreachable(f"{type(exc).__name__}: {exc}") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if not isinstance(payload, dict):
            payload = {}
        if response.status_code == 200 and isinstance(payload.get("access_token"), str):
            return payload["access_token"], _lifetime(payload)
        if 400 <= response.status_code < 500 and "error" in payload:
            raise self._refused(str(payload["error"]), str(payload.get("error_description", "")))
        raise self._unreachable(f"HTTP {response.status_code} from the token endpoint")


class MicrosoftToken(TokenProvider):
    """Microsoft 365 (Entra ID) through msal: the app's token (client credentials, needs
    ``client_secret``) or, with ``refresh_token``, a user's (a public client without a secret,
    or a confidential one with it). A refresh token Microsoft replaces is kept in memory."""

    def __init__(
        self,
        *,
        tenant_id: str,
        client_id: str,
        client_secret: SecretStr | None = None,
        refresh_token: SecretStr | None = None,
        authority_host: str = MICROSOFT_AUTHORITY,
        scope: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(timeout=timeout)
        if client_secret is None and refresh_token is None:
            raise ValueError("Microsoft OAuth2 needs a client secret or a refresh token")
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self._initial_refresh = refresh_token
        self.authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self.user_flow = refresh_token is not None
        self.scope = scope or (MICROSOFT_USER_SCOPE if self.user_flow else MICROSOFT_APP_SCOPE)
        self.kind = "Microsoft 365 OAuth2 " + (
            "(refresh token)" if self.user_flow else "(client credentials)"
        )
        self.where = _host(authority_host)
        self.hint = (
            "the refresh token was revoked or expired: sign the user in again and save the new one"
            if self.user_flow
            else "the client secret may have expired: make a new one in Entra and save it"
        ) + (
            " in the Microsoft 365 OAuth2 block; check its tenant and client id (README,"
            " Microsoft 365); " + _RESUME
        )
        self.smtp_hint = (
            (
                "the token needs the SMTP.Send permission, and SMTP AUTH must be enabled for the"
                " mailbox"
                if self.user_flow
                else "the app needs the SMTP.SendAsApp permission with admin consent, its service"
                " principal registered in Exchange Online with access to the mailbox, and SMTP AUTH"
                " enabled for the mailbox"
            )
            + " (README, Microsoft 365); "
            + _RESUME
        )
        self._app: Any = None

    def _identity(self) -> list[str]:
        secrets = [s.get_secret_value() if s else "" for s in self._initial_secrets()]
        return [self.authority, self.client_id, self.scope, *secrets]

    def _initial_secrets(self) -> list[SecretStr | None]:
        return [self._client_secret, self._initial_refresh]

    def _secrets(self) -> list[str]:
        found = [*self._initial_secrets(), self._refresh_token]
        return [s.get_secret_value() for s in found if s is not None]

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        import httpx
        import msal

        from mailcast.transport.http_api import shared_client

        common: dict[str, Any] = {
            "authority": self.authority,
            "http_client": shared_client(self.timeout, True),
            "instance_discovery": False,  # the authority is Entra's own or one you run
            "timeout": self.timeout,
        }
        try:
            if self._client_secret is not None:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._client_secret.get_secret_value(),
                    **common,
                )
            else:
                self._app = msal.PublicClientApplication(self.client_id, **common)
        except httpx.HTTPError as exc:
            raise self._unreachable(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # msal: the tenant's OpenID configuration cannot be read
            raise AuthError(
                f"{self.kind}: cannot use the authority {self.authority}: "
                f"{self._scrub(str(exc).splitlines()[0])}",
                where=self.where,
                hint="check the tenant id (a GUID or contoso.onmicrosoft.com) in the Microsoft"
                " 365 OAuth2 block",
            ) from None
        return self._app

    def _fetch(self) -> tuple[str, float]:
        import httpx

        app = self._application()
        try:
            if self._refresh_token is None:
                result = app.acquire_token_for_client(scopes=[self.scope])
            else:
                result = app.acquire_token_by_refresh_token(
                    self._refresh_token.get_secret_value(), scopes=[self.scope]
                )
        except httpx.HTTPError as exc:
            raise self._unreachable(f"{type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # msal: an answer that is not JSON (a proxy's error page)
            raise self._unreachable(
                str(exc).splitlines()[0] if str(exc) else "bad answer"
            ) from None
        if not isinstance(result, dict):
            raise self._unreachable("no answer")
        if isinstance(result.get("access_token"), str):
            if self.user_flow and isinstance(result.get("refresh_token"), str):
                self._refresh_token = SecretStr(result["refresh_token"])  # Microsoft rotates it
            return result["access_token"], _lifetime(result)
        error = str(result.get("error", "no access token"))
        if error in ("temporarily_unavailable", "server_error"):
            raise self._unreachable(f"{error} (the endpoint is busy or failing)")
        raise self._refused(error, str(result.get("error_description", "")).splitlines()[0])

    def _forget(self) -> None:
        # msal returns a cached token until five minutes before its expiry: drop it too
        if self._app is None:
            return
        cache = self._app.token_cache
        for entry in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)


_shared: dict[str, TokenProvider] = {}
_shared_lock = threading.Lock()


def shared(provider: TokenProvider) -> TokenProvider:
    """The process's provider for these credentials: ``provider`` the first time, then the
    one already made (one token cache per process, not one token request per connection)."""
    key = provider.key
    with _shared_lock:
        return _shared.setdefault(key, provider)


def forget_shared() -> None:
    """Drop every shared provider (tests)."""
    with _shared_lock:
        _shared.clear()
