"""The Gmail API transport against a fake of the documented endpoint on loopback, with tokens
from a local OAuth2 token endpoint: the message uploaded as it is, Gmail's id on the reply,
every documented answer mapped to its transport-neutral outcome."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mailcast.blocks import GmailApi, GoogleOAuth2

from mailcast.engine.chunk import send_chunk
from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    RefusalKind,
    SpecError,
)
from mailcast.transport.api_config import ApiEndpoint
from mailcast.transport.factory import Target
from mailcast.transport.gmail import GmailConfig, GmailTransport, setup_from_url
from tests.gmail_fake import GmailFake
from tests.ledger_rows import chunk_ranges
from tests.oauth2_fakes import (  # noqa: F401 (fresh_tokens: a fixture)
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    TokenServer,
    fresh_tokens,
    google_credentials,
)
from tests.test_throughput_engine import _planned

pytestmark = pytest.mark.usefixtures("fresh_tokens")


def message(to: str) -> bytes:
    return (
        f"From: {MAILBOX}\r\nTo: <{to}>\r\nSubject: hello\r\nMessage-ID: <m@x>\r\n\r\nHi\r\n"
    ).encode()


@pytest.fixture
def servers() -> Iterator[tuple[TokenServer, GmailFake]]:
    with TokenServer() as tokens, GmailFake(tokens, stall=1.0) as gmail:
        yield tokens, gmail


def block(tokens: TokenServer, gmail: GmailFake, **fields: object) -> GmailApi:
    credentials = google_credentials(tokens)
    return GmailApi(credentials=credentials, base_url=gmail.url, **fields)  # type: ignore[arg-type]


def transport(tokens: TokenServer, gmail: GmailFake, **fields: object) -> GmailTransport:
    return block(tokens, gmail, **fields).setup().new_transport()


def test_a_message_is_uploaded_as_it_is_and_gets_gmails_id(
    servers: tuple[TokenServer, GmailFake],
) -> None:
    tokens, gmail = servers
    sender = transport(tokens, gmail)
    sender.open()
    data = message("a@example.org")
    reply = sender.send(MAILBOX, "a@example.org", data)
    reply2 = transport(tokens, gmail).send(MAILBOX, "b@example.org", message("b@example.org"))
    [(mid, to, raw), _] = gmail.sent
    assert (to, raw) == ("a@example.org", data)
    assert reply.code == 200 and reply.provider_message_id == mid
    assert reply2.provider_message_id not in (None, mid)
    assert tokens.requests == {"refresh_token": 1}  # two transports, one token


@pytest.mark.parametrize(
    ("fault", "code", "kind"),
    [
        ("429", 429, RefusalKind.THROTTLED),
        ("403-rate", 403, RefusalKind.THROTTLED),
        ("500", 500, RefusalKind.TEMPORARY),
        ("400", 400, RefusalKind.PERMANENT),
    ],
)
def test_refusals_map_to_transport_neutral_outcomes(
    servers: tuple[TokenServer, GmailFake], fault: str, code: int, kind: RefusalKind
) -> None:
    tokens, gmail = servers
    gmail.fail("a@example.org", fault)
    with pytest.raises(DeliveryRefused) as caught:
        transport(tokens, gmail).send(MAILBOX, "a@example.org", message("a@example.org"))
    assert (caught.value.code, caught.value.kind) == (code, kind)
    assert not gmail.sent
    assert str(caught.value).startswith("gmail 127.0.0.1:")


def test_a_refused_token_is_replaced_once(servers: tuple[TokenServer, GmailFake]) -> None:
    tokens, gmail = servers
    sender = transport(tokens, gmail)
    sender.open()
    gmail.fail("a@example.org", "401")  # the token is invalidated before its expiry
    reply = sender.send(MAILBOX, "a@example.org", message("a@example.org"))
    assert reply.provider_message_id and gmail.copies() == {"a@example.org": 1}
    assert tokens.requests == {"refresh_token": 2} and gmail.requests == 2

    tokens.revoke()  # and now the refresh token is gone too
    gmail.fail("b@example.org", "401")
    with pytest.raises(AuthError, match="invalid_grant"):
        sender.send(MAILBOX, "b@example.org", message("b@example.org"))


def test_a_token_the_api_refuses_twice_is_an_auth_error(
    servers: tuple[TokenServer, GmailFake],
) -> None:
    tokens, gmail = servers
    with pytest.raises(AuthError) as caught:  # tokens of another account
        transport(tokens, gmail, user_id="other@example.org").send(
            MAILBOX, "a@example.org", message("a@example.org")
        )
    assert "401" in str(caught.value) and "gmail.send" in caught.value.hint
    assert tokens.requests == {"refresh_token": 2}


def test_no_answer_after_the_request_was_sent_is_unknown(
    servers: tuple[TokenServer, GmailFake],
) -> None:
    tokens, gmail = servers
    gmail.fail("a@example.org", "timeout")
    with pytest.raises(ConnectionLost) as caught:
        transport(tokens, gmail, timeout=0.3).send(
            MAILBOX, "a@example.org", message("a@example.org")
        )
    assert caught.value.maybe_delivered  # Gmail has it: the row must become unknown
    assert gmail.copies() == {"a@example.org": 1}


def test_an_api_that_cannot_be_reached_is_a_connect_error(
    servers: tuple[TokenServer, GmailFake],
) -> None:
    tokens, gmail = servers
    provider = block(tokens, gmail).credentials.token_provider()
    config = GmailConfig(oauth2=provider, endpoint=ApiEndpoint("gmail", "http://127.0.0.1:9"))
    with pytest.raises(ConnectError):
        GmailTransport(config).send(MAILBOX, "a@example.org", message("a@example.org"))


def test_the_url_names_the_credentials_block(monkeypatch: pytest.MonkeyPatch) -> None:
    saved = GoogleOAuth2(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, refresh_token="r")
    loaded: list[str] = []

    def load(cls: type, name: str, **kw: object) -> GoogleOAuth2:
        loaded.append(name)
        return saved

    monkeypatch.setattr(GoogleOAuth2, "load", classmethod(load))
    config = setup_from_url("gmail://me?oauth2=newsletter&timeout=5")
    assert (config.user_id, config.endpoint.timeout, loaded) == ("me", 5.0, ["newsletter"])
    assert config.oauth2 is saved.token_provider()
    assert setup_from_url("gmail://?oauth2=x&user=news@example.org").user_id == "news@example.org"
    assert config.where == "gmail gmail.googleapis.com"
    chosen = Target(url="gmail://me?oauth2=newsletter")  # through the registry
    assert chosen.kind.label == "Gmail API" and isinstance(chosen.setup(), GmailConfig)
    for bad, why in [
        ("gmail://me", "no credentials"),
        ("gmail://me?oauth2=x&token=abc", "unknown option 'token'"),
        ("gmail://me?oauth2=x&timeout=0", "timeout must be > 0"),
        ("gmail://me/path?oauth2=x", "unexpected path"),
        ("gmail://news:pw@me?oauth2=x", "no credentials in the gmail:// URL"),
    ]:
        with pytest.raises(SpecError, match=why):
            setup_from_url(bad)


def test_a_campaign_through_the_gmail_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, servers: tuple[TokenServer, GmailFake]
) -> None:
    tokens, gmail = servers
    gmail.stall = 3.0
    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    spec, run_id, ledger = _planned(tmp_path / "c", db, 300, max_attempts=3)
    faults = {
        "person10@example.com": ["429"],
        "person20@example.com": ["403-rate", "429"],
        "person30@example.com": ["500", "500"],
        "person40@example.com": ["400"],  # refused: failed
        "person50@example.com": ["timeout"],  # Gmail has it, the answer never came: unknown
        "person60@example.com": ["401"],  # the token is replaced, the message goes
    }
    for address, kinds in faults.items():
        gmail.fail(address, *kinds)
    saved = block(tokens, gmail, timeout=2.0)
    monkeypatch.setattr(GmailApi, "load", classmethod(lambda cls, name, **kw: saved))
    (bounds,) = chunk_ranges(ledger, run_id, 1000)

    result = send_chunk(spec, run_id, bounds, db, Target(block="gmail/newsletter"), threads=4)

    rows = {r["address"]: r for r in ledger.deliveries(run_id)}
    assert {r["status"] for r in rows.values()} <= {"sent", "failed", "unknown"}  # all final
    counts = ledger.counts(run_id)
    assert (counts["sent"], counts["failed"], counts["unknown"]) == (298, 1, 1)
    assert result.sent == 298
    assert (
        rows["person40@example.com"]["reason"]
        == "rejected: 400 Invalid To header (invalidArgument)"
    )
    copies = gmail.copies()
    assert len(copies) == 299 and set(copies.values()) == {1}  # each message once at Gmail
    ids = gmail.ids()
    for address, row in rows.items():
        if row["status"] == "sent":
            assert row["provider_message_id"] == ids[address]  # Gmail's id, stored
    assert rows["person50@example.com"]["provider_message_id"] is None
    assert tokens.requests["refresh_token"] == 2  # one token for 4 connections, one 401
