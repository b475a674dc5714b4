"""OAuth2 for SMTP (XOAUTH2): Microsoft 365 through msal (client credentials, a refresh token)
and Google (a refresh token), against a real token endpoint and a real SMTP server on loopback
that checks the XOAUTH2 string. Tokens are shared by the connections of a process, replaced
before they expire and once when the server refuses them; a revoked refresh token stops the run
with nobody marked failed."""

from __future__ import annotations

import base64
import logging
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from mailcast.blocks import GoogleOAuth2, MicrosoftOAuth2, SmtpServer
from pydantic import SecretStr

from mailcast.engine.chunk import send_chunk
from mailcast.errors import AuthError, ConnectError
from mailcast.transport import oauth2
from mailcast.transport.factory import Target
from mailcast.transport.oauth2 import GoogleToken, MicrosoftToken, xoauth2
from mailcast.transport.smtp import SmtpTransport
from tests.ledger_rows import chunk_ranges
from tests.oauth2_fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    REFRESH_TOKEN,
    TENANT,
    TokenServer,
    XOAuth2Server,
    fresh_tokens,  # noqa: F401 (a fixture)
    google_credentials,
)
from tests.smtp_faults import self_signed_context
from tests.test_throughput_engine import _planned

pytestmark = pytest.mark.usefixtures("fresh_tokens")
MESSAGE = b"From: news@contoso.example\r\nTo: you@example.org\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A server certificate the HTTP client trusts (msal talks to an authority over HTTPS)."""
    context, cert = self_signed_context(tmp_path / "tls")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return context


def google(tokens: TokenServer, **overrides: Any) -> GoogleToken:
    fields: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(CLIENT_SECRET),
        "refresh_token": SecretStr(REFRESH_TOKEN),
        "token_uri": tokens.google_token_uri,
    }
    return GoogleToken(**{**fields, **overrides})


def microsoft(tokens: TokenServer, **overrides: Any) -> MicrosoftToken:
    fields: dict[str, Any] = {
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(CLIENT_SECRET),
        "authority_host": tokens.url,
    }
    return MicrosoftToken(**{**fields, **overrides})


def send_over(server: XOAuth2Server, provider: Any, n: int, threads: int = 1) -> None:
    """``n`` messages over ``threads`` connections (one transport each) of one provider."""
    config = server.config(password=None, oauth2=provider)

    def connection(k: int) -> None:
        with SmtpTransport(config) as transport:
            for i in range(k, n, threads):
                transport.send(MAILBOX, f"r{i}@example.org", MESSAGE)

    workers = [threading.Thread(target=connection, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def test_the_xoauth2_string_is_googles_documented_example() -> None:
    # https://developers.google.com/workspace/gmail/imap/xoauth2-protocol
    token = "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
    assert base64.b64encode(xoauth2("someuser@example.com", token).encode()) == (
        b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52"
        b"YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
    )


def test_microsoft_client_credentials_one_token_for_every_connection(tls: Any) -> None:
    with TokenServer(tls=tls) as tokens, XOAuth2Server(tokens) as server:
        provider = microsoft(tokens)
        send_over(server, provider, 40, threads=4)
        assert server.connections == 4 and server.auth_ok == 4
        assert len(server.messages) == 40
    assert tokens.requests == {"client_credentials": 1}  # one cache, four connections


def test_microsoft_refresh_token_keeps_the_rotated_one(tls: Any) -> None:
    with TokenServer(tls=tls, rotate=True, lifetime=1) as tokens, XOAuth2Server(tokens) as srv:
        provider = microsoft(tokens, client_secret=None, refresh_token=SecretStr(REFRESH_TOKEN))
        with SmtpTransport(srv.config(password=None, oauth2=provider)) as transport:
            transport.send(MAILBOX, "a@example.org", MESSAGE)
        tokens.invalidate_tokens()  # the next login is refused: a new token, once
        with SmtpTransport(srv.config(password=None, oauth2=provider)) as transport:
            transport.send(MAILBOX, "b@example.org", MESSAGE)
        assert len(srv.messages) == 2 and srv.auth_refused == 1
    assert tokens.requests == {"refresh_token": 2}
    first, second = tokens.refresh_tokens_used
    assert first == REFRESH_TOKEN and second != REFRESH_TOKEN  # Microsoft's new one was used


def test_google_refresh_token_renewed_before_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(oauth2.time, "monotonic", lambda: now[0])
    with TokenServer(lifetime=100) as tokens, XOAuth2Server(tokens) as server:
        provider = google(tokens)
        first = provider.token()
        now[0] += 79  # more than a fifth of its lifetime left: the cached token
        assert provider.token() == first
        now[0] += 2  # less: a new one
        with SmtpTransport(server.config(password=None, oauth2=provider)) as transport:
            transport.send(MAILBOX, "a@example.org", MESSAGE)
        assert server.auth_ok == 1 and server.auth_refused == 0 and len(server.messages) == 1
    assert tokens.requests == {"refresh_token": 2}


def test_a_token_refused_twice_is_an_auth_error() -> None:
    with TokenServer() as tokens, XOAuth2Server(tokens) as server:
        config = server.config(password=None, oauth2=google(tokens), username="other@x.example")
        with pytest.raises(AuthError) as caught:
            SmtpTransport(config).send(MAILBOX, "a@example.org", MESSAGE)
        assert server.auth_refused == 2 and not server.messages
    assert "535" in str(caught.value) and "refused too" in str(caught.value)
    assert "mail.google.com" in caught.value.hint


def test_token_endpoint_refusals_and_outages() -> None:
    with TokenServer() as tokens:
        with pytest.raises(AuthError, match="invalid_client"):
            google(tokens, client_secret=SecretStr("wrong")).token()
        tokens.revoke()
        with pytest.raises(AuthError, match="invalid_grant") as caught:
            google(tokens).token()
        assert "resume" in caught.value.hint
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{unused.getsockname()[1]}/token"
    with pytest.raises(ConnectError, match="no access token"):
        google(tokens, token_uri=gone).token()


def test_the_block_gives_one_provider_per_process() -> None:
    def block() -> SmtpServer:
        creds = GoogleOAuth2(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="r")
        return SmtpServer(host="smtp.gmail.com", username=MAILBOX, oauth2=creds)

    assert block().to_config().oauth2 is block().to_config().oauth2
    other = GoogleOAuth2(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="r2")
    assert other.token_provider() is not block().to_config().oauth2
    with pytest.raises(ValueError, match="client_secret or a user's refresh_token"):
        MicrosoftOAuth2(tenant_id=TENANT, client_id=CLIENT_ID)
    with pytest.raises(ValueError, match="mailbox"):
        SmtpServer(host="h", oauth2=other)
    for text in (repr(block()), repr(block().to_config()), block().model_dump_json()):
        assert CLIENT_SECRET not in text and "'r'" not in text


# -- a campaign ------------------------------------------------------------------------------


def _block_named(
    monkeypatch: pytest.MonkeyPatch, server: XOAuth2Server, creds: GoogleOAuth2 | MicrosoftOAuth2
) -> Target:
    """The run's SMTP block with these credentials, as the worker loads it (no Prefect)."""
    block = SmtpServer(
        host="127.0.0.1", port=server.port, security="none", username=MAILBOX, oauth2=creds
    )
    monkeypatch.setattr(SmtpServer, "load", classmethod(lambda cls, name, **kw: block))
    return Target(smtp_block="oauth")


def after(server: XOAuth2Server, messages: int, action: Any) -> threading.Thread:
    """Run ``action`` once the server has accepted ``messages`` messages."""

    def wait_then_act() -> None:
        server.wait_for(messages, timeout=60)
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, tokens: TokenServer) -> None:
    logged = caplog.text + "\n".join(repr(r.args) for r in caplog.records)
    assert "new access token" in logged  # the DEBUG lines were captured
    for secret in (CLIENT_SECRET, REFRESH_TOKEN, *tokens.every_token):
        for form in (secret, base64.b64encode(xoauth2(MAILBOX, secret).encode()).decode()):
            assert form not in logged


def test_tokens_expiring_and_invalidated_mid_run_lose_and_repeat_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    spec, run_id, ledger = _planned(tmp_path / "c", db, 300, rate_limit=120)
    with TokenServer(lifetime=2) as tokens, XOAuth2Server(tokens, per_connection=15) as server:
        target = _block_named(monkeypatch, server, google_credentials(tokens))
        # mid-run, every token issued so far is invalidated (before it expires)
        server.invalidate_at_login = 8
        (bounds,) = chunk_ranges(ledger, run_id, 1000)
        result = send_chunk(spec, run_id, bounds, db, target, threads=4)
        copies = Counter(m.rcpt_tos[0] for m in server.messages)
        refused, logins = server.auth_refused, server.auth_ok
    assert result.sent == 300 and ledger.counts(run_id)["sent"] == 300
    assert len(copies) == 300 and set(copies.values()) == {1}  # each message exactly once
    assert refused >= 1  # the invalidated token was refused, replaced, and the login went on
    assert tokens.requests["refresh_token"] >= 2  # renewed as they expired (a ~2.5 s run)
    assert logins >= 20  # reconnects every 15 messages: every one logged in again
    assert_no_secret_logged(caplog, tokens)


def test_a_revoked_refresh_token_stops_the_run_and_fails_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tls: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    spec, run_id, ledger = _planned(tmp_path / "c", db, 120, rate_limit=150)
    with TokenServer(lifetime=1, tls=tls) as tokens, XOAuth2Server(tokens) as server:
        creds = MicrosoftOAuth2(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            refresh_token=REFRESH_TOKEN,
            authority_host=tokens.url,
        )
        target = _block_named(monkeypatch, server, creds)

        def revoke() -> None:  # an admin revokes the user's sessions
            tokens.revoke()
            tokens.invalidate_tokens()
            server.per_connection = 1  # the connections come back for a new login

        timer = after(server, 30, revoke)
        (bounds,) = chunk_ranges(ledger, run_id, 1000)
        with pytest.raises(AuthError) as caught:
            send_chunk(spec, run_id, bounds, db, target, threads=2)
        timer.join()
        delivered = len(server.messages)
    counts = ledger.counts(run_id)
    assert counts["failed"] == 0 and counts["unknown"] == 0
    assert 0 < counts["sent"] == delivered < 120 and counts["pending"] == 120 - delivered
    line = str(caught.value)
    assert "\n" not in line and "invalid_grant" in line
    assert "resume" in caught.value.hint
    assert_no_secret_logged(caplog, tokens)
