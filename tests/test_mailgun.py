"""The Mailgun transport against a local fake of ``POST /v3/{domain}/messages.mime``: every
answer's outcome (tests/fakes/contract.py), the MIME upload, the domain and regions."""

from __future__ import annotations

import pytest
from mailcast.blocks import MailgunAccount

from mailcast.errors import AuthError, SpecError
from mailcast.transport.mailgun import MailgunConfig, MailgunTransport
from tests.fakes.contract import SENDER, Provider, provider_tests
from tests.fakes.mailgun_fake import FakeMailgun
from tests.fakes.messages import Messages

KEY = "key-test"
WRONG = "key-wrong-0123"
DOMAIN = "mg.example.com"


def transport(base_url: str, good: bool = True, timeout: float = 5.0) -> MailgunTransport:
    key = KEY if good else WRONG
    return MailgunTransport(MailgunConfig.create(key, DOMAIN, base_url=base_url, timeout=timeout))


PROVIDER = Provider(
    FakeMailgun,
    transport,
    200,
    (KEY, WRONG),
    rejected_words="to parameter is not a valid",
    url=lambda base_url: f"mailgun://{DOMAIN}?base_url={base_url}",
    env={"MAILCAST_MAILGUN_API_KEY": (KEY, WRONG)},
)
globals().update(provider_tests(PROVIDER))  # every answer; 1,000-recipient campaigns


def test_the_message_is_uploaded_as_built(messages: Messages) -> None:
    """Mailgun gets the very bytes mailcast built (headers, parts, a DKIM signature) and the
    recipient; its id is stored without the angle brackets."""
    data = messages[2]
    with FakeMailgun() as fake:
        reply = transport(fake.base_url).send(SENDER, messages.address(2), data)
        stored = fake.by_recipient(messages.address(2))
    assert stored.fields == {"to": "person2@example.com"}
    assert stored.mime == data
    assert reply.provider_message_id == stored.provider_id[1:-1]
    assert (reply.code, reply.text) == (200, "Queued. Thank you.")


def test_an_unknown_domain_stops_the_run(messages: Messages) -> None:
    with FakeMailgun(domain="other.example.com") as fake, pytest.raises(AuthError) as caught:
        transport(fake.base_url).send(SENDER, messages.address(0), messages[0])
    assert "404" in str(caught.value) and "domain" in caught.value.hint


def test_url_forms() -> None:
    us = MailgunConfig.from_url(f"mailgun://{DOMAIN}", KEY)
    assert (us.domain, us.endpoint.base_url) == (DOMAIN, "https://api.mailgun.net")
    eu = MailgunConfig.from_url(f"mailgun://{DOMAIN}?region=EU", KEY)
    assert eu.endpoint.base_url == "https://api.eu.mailgun.net"
    local = MailgunConfig.from_url(f"mailgun://{DOMAIN}?base_url=http://127.0.0.1:9/", KEY)
    assert local.endpoint.base_url == "http://127.0.0.1:9"
    assert KEY not in repr(local) and DOMAIN in MailgunTransport(local).where
    for bad in ("mailgun://", "mailgun://api:key@mg.example.com", "mailgun://d?region=asia"):
        with pytest.raises(SpecError):
            MailgunConfig.from_url(bad, KEY)
    with pytest.raises(SpecError, match="no Mailgun API key"):
        MailgunConfig.from_url(f"mailgun://{DOMAIN}", "")


def test_block() -> None:
    block = MailgunAccount(api_key=KEY, domain=DOMAIN, region="eu")
    assert block.to_config() == MailgunConfig.create(KEY, DOMAIN, region="eu")
    for text in (repr(block), block.model_dump_json(), repr(block.to_config())):
        assert KEY not in text
