"""Local OAuth2 servers for the tests, real servers on loopback:

- ``TokenServer``: an OAuth2 token endpoint issuing short-lived access tokens, counting
  requests. Google's form (``POST /token``, ``grant_type=refresh_token``) and Microsoft Entra's
  (``GET /{tenant}/v2.0/.well-known/openid-configuration``, ``POST /{tenant}/oauth2/v2.0/token``
  with ``client_credentials`` or ``refresh_token``; msal needs HTTPS: pass ``tls``).
- ``XOAuth2Server``: an SMTP server (aiosmtpd) that offers only ``AUTH XOAUTH2`` and checks the
  string (user and a token the token server issued, still valid). A bad token gets the
  documented error challenge (``334`` + base64 JSON), then ``535`` on the empty continuation.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs

import pytest
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session
from mailcast.blocks import GoogleOAuth2

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP
from mailcast.transport import http_api, oauth2

CLIENT_ID = "mailcast-test-client"
CLIENT_SECRET = "cs-Hq8v-TEST-client-secret-41"
REFRESH_TOKEN = "rt-Zm2p-TEST-refresh-token-77"
TENANT = "contoso.onmicrosoft.com"
MAILBOX = "news@contoso.example"
MS_APP_SCOPE = "https://outlook.office365.com/.default"
_ERROR_CHALLENGE = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}


@pytest.fixture
def fresh_tokens() -> Iterator[None]:
    """A test starts and ends without the process's shared token providers and HTTP client."""
    oauth2.forget_shared()
    http_api.close_clients()
    yield
    oauth2.forget_shared()
    http_api.close_clients()


def google_credentials(tokens: TokenServer) -> GoogleOAuth2:
    """A Google OAuth2 block for the test client, with ``tokens`` as its token endpoint."""
    return GoogleOAuth2(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH_TOKEN,
        token_uri=tokens.google_token_uri,
    )


class JsonHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, quiet, JSON answers (for the fakes' handlers)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def reply(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up waiting
            self.close_connection = True


class LoopbackHttp:
    """A threaded HTTP server on 127.0.0.1 (HTTPS with ``tls``), as a context manager;
    subclasses give the handler class."""

    tls: ssl.SSLContext | None = None
    _httpd: ThreadingHTTPServer | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._httpd is not None
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> Self:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        httpd.daemon_threads = True
        if self.tls is not None:
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


class TokenServer(LoopbackHttp):
    """An OAuth2 token endpoint on 127.0.0.1. Use as a context manager."""

    def __init__(
        self,
        *,
        lifetime: float = 3600,
        tls: ssl.SSLContext | None = None,
        user: str = MAILBOX,
        rotate: bool = False,
    ) -> None:
        self.lifetime = lifetime
        self.tls = tls
        self.user = user  # whose refresh token REFRESH_TOKEN is
        self.rotate = rotate  # Microsoft: answer a refresh token with a new one
        self.requests: Counter[str] = Counter()  # grant type → count
        self.refresh_tokens_used: list[str] = []
        self.refresh_tokens = {REFRESH_TOKEN}
        self.every_token: list[str] = []  # every access and refresh token issued
        self._lock = threading.Lock()
        self._issued: dict[str, tuple[str | None, float]] = {}  # token → (user, expires)
        self._not_before = 0.0  # tokens issued before this were invalidated

    # -- what the tests control and ask ------------------------------------------------------

    @property
    def google_token_uri(self) -> str:
        return f"{self.url}/token"

    def total(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def revoke(self) -> None:
        """The refresh tokens are revoked (as a user or an admin does)."""
        with self._lock:
            self.refresh_tokens.clear()

    def invalidate_tokens(self) -> None:
        """Every access token issued so far is refused from now on (before its expiry)."""
        with self._lock:
            self._not_before = time.monotonic()
            self._issued.clear()

    def check(self, user: str, token: str) -> bool:
        """Is ``token`` an access token this server issued, unexpired, for ``user``?"""
        with self._lock:
            found = self._issued.get(token)
        if found is None:
            return False
        owner, expires = found
        return time.monotonic() < expires and (owner is None or owner == user)

    # -- the endpoint ------------------------------------------------------------------------

    def issue(self, owner: str | None) -> dict[str, Any]:
        token = "at-" + secrets.token_urlsafe(24)
        with self._lock:
            self._issued[token] = (owner, time.monotonic() + self.lifetime)
            self.every_token.append(token)
        # expires_in is an integer in OAuth2 (RFC 6749 5.1); sub-second lifetimes round up
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime}

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        with self._lock:
            self.requests[grant] += 1
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client", "error_description": "Unknown client."}
        if grant == "client_credentials":
            if form.get("client_secret") != CLIENT_SECRET:
                return 401, {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.",
                }
            if form.get("scope") != MS_APP_SCOPE:
                return 400, {"error": "invalid_scope", "error_description": form.get("scope")}
            return 200, self.issue(None)
        if grant == "refresh_token":
            rt = form.get("refresh_token", "")
            with self._lock:
                self.refresh_tokens_used.append(rt)
                known = rt in self.refresh_tokens
            if path == "/token" and form.get("client_secret") != CLIENT_SECRET:
                return 401, {"error": "invalid_client", "error_description": "Bad secret."}
            if not known:
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "Token has been expired or revoked.",
                }
            body = self.issue(self.user)
            if self.rotate:
                new = "rt-" + secrets.token_urlsafe(16)
                with self._lock:
                    self.refresh_tokens.add(new)
                    self.every_token.append(new)
                body["refresh_token"] = new
                body["scope"] = form.get("scope", "")
            return 200, body
        return 400, {"error": "unsupported_grant_type"}

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.url}/{tenant}"
        return {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
        }

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", self.path)
                if m is None:
                    self.reply(404, {"error": "not_found"})
                else:
                    self.reply(200, server.openid_configuration(m.group(1)))

            def do_POST(self) -> None:
                form = {k: v[0] for k, v in parse_qs(self.body().decode()).items()}
                path = self.path.split("?", 1)[0]
                if path == "/token" or re.fullmatch(r"/[^/]+/oauth2/v2\.0/token", path):
                    self.reply(*server.answer(path, form))
                else:
                    self.reply(404, {"error": "not_found"})

        return Handler


def parse_xoauth2(blob: bytes) -> tuple[str, str] | None:
    """``user=U\\x01auth=Bearer T\\x01\\x01`` → (U, T); None when malformed."""
    m = re.fullmatch(rb"user=([^\x01]+)\x01auth=Bearer ([^\x01]+)\x01\x01", blob)
    return (m.group(1).decode(), m.group(2).decode()) if m else None


class XOAuth2SMTP(CaptureSMTP):
    def __init__(self, handler: Any, **kwargs: Any) -> None:
        kwargs.pop("authenticator", None)  # XOAUTH2 only: no PLAIN, no LOGIN
        kwargs["auth_require_tls"] = False
        super().__init__(handler, auth_exclude_mechanism=["PLAIN", "LOGIN"], **kwargs)


class XOAuth2Handler(CaptureHandler):
    server: XOAuth2Server

    async def auth_XOAUTH2(self, smtp: SMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await smtp.challenge_auth("", encode_to_b64=False)
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await smtp.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        assert isinstance(blob, bytes)
        self.server.before_login()
        parsed = parse_xoauth2(blob)
        ok = parsed is not None and self.server.tokens.check(*parsed)
        self.server.count_auth(ok)
        if ok:
            assert parsed is not None
            return AuthResult(success=True, auth_data=parsed[0])
        # the documented failure: an error challenge, the client's empty line, then 535
        answer = await smtp.challenge_auth(json.dumps(_ERROR_CHALLENGE))
        if answer is MISSING:
            return AuthResult(success=False, handled=True)
        if answer != b"":
            await smtp.push("501 5.5.2 Expected an empty response to the error challenge")
            return AuthResult(success=False, handled=True)
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted. BadCredentials",
        )

    async def handle_MAIL(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        limit = self.server.per_connection
        if limit and smtp.accepted >= limit:  # a per-connection message limit: reconnect
            return "421 4.7.0 Too many messages on this connection, reconnect"
        return await super().handle_MAIL(smtp, session, envelope, address, mail_options)


class XOAuth2Server(CaptureServer):
    """A capturing SMTP server whose only login is AUTH XOAUTH2 against ``tokens``;
    ``per_connection``: answer 421 at MAIL after that many messages on a connection;
    ``invalidate_at_login``: the tokens are invalidated just before that login."""

    handler_class: ClassVar[type[CaptureHandler]] = XOAuth2Handler
    smtp_class: ClassVar[type[CaptureSMTP]] = XOAuth2SMTP

    def __init__(self, tokens: TokenServer, *, per_connection: int = 0, **kwargs: Any) -> None:
        super().__init__(username=tokens.user, **kwargs)
        self.tokens = tokens
        self.per_connection = per_connection
        self.auth_ok = 0
        self.auth_refused = 0
        self.logins = 0
        self.invalidate_at_login = 0  # invalidate every token just before this login (1-based)

    def before_login(self) -> None:
        with self._lock:
            self.logins += 1
            now = self.logins == self.invalidate_at_login
        if now:
            self.tokens.invalidate_tokens()

    def count_auth(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.auth_ok += 1
            else:
                self.auth_refused += 1
