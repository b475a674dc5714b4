"""The SendGrid v3 transport against a local fake of ``POST /v3/mail/send``: every answer's
outcome and a 1,000-recipient campaign with faults (tests/fakes/contract.py), the JSON it sends for a message mailcast built, its URL."""

from __future__ import annotations

import base64

import pytest
from mailcast.blocks import SendGridAccount

from mailcast.errors import SpecError
from mailcast.transport.sendgrid import SendGridConfig, SendGridTransport
from tests.fakes.contract import SENDER, Provider, provider_tests
from tests.fakes.messages import Messages
from tests.fakes.sendgrid_fake import FakeSendGrid

KEY = "SG.test-key"
WRONG = "SG.wrong-key-0123"


def transport(base_url: str, good: bool = True, timeout: float = 5.0) -> SendGridTransport:
    config = SendGridConfig.create(KEY if good else WRONG, base_url=base_url, timeout=timeout)
    return SendGridTransport(config)


PROVIDER = Provider(
    FakeSendGrid,
    transport,
    202,
    (KEY, WRONG),
    rejected_words="Does not contain a valid address",
    url=lambda base_url: f"sendgrid://?base_url={base_url}",
    env={"MAILCAST_SENDGRID_API_KEY": (KEY, WRONG)},
)
# every answer; 1,000-recipient campaigns; the CLI and the flow
globals().update(provider_tests(PROVIDER, cli=True))


def test_the_message_is_sent_field_by_field(messages: Messages) -> None:
    """From, reply-to, subject, text then HTML, the attachment's bytes and every other header
    (List-Unsubscribe, List-Unsubscribe-Post, Message-ID, the campaign's own) arrive."""
    with FakeSendGrid() as fake:
        t = transport(fake.base_url)
        t.send(SENDER, messages.address(3), messages[3])
        mail = fake.by_recipient(messages.address(3)).fields
    assert mail["personalizations"] == [{"to": [{"email": "person3@example.com"}]}]
    assert mail["from"] == {"email": "sender@mailcast.example", "name": "Test Sender"}
    assert mail["reply_to"] == {"email": "help@mailcast.example", "name": "Help Désk"}
    assert mail["subject"] == "Fïrst3, your code C000003"
    text, html = mail["content"]
    assert text["type"] == "text/plain" and "Hello Fïrst3 Låst3" in text["value"]
    assert html["type"] == "text/html" and "<h1>Hello Fïrst3 Låst3</h1>" in html["value"]
    (attachment,) = mail["attachments"]
    assert attachment["filename"] == "doc.pdf" and attachment["type"] == "application/pdf"
    assert attachment["disposition"] == "attachment"
    assert base64.b64decode(attachment["content"]) == messages.pdf
    headers = mail["headers"]
    assert headers["Message-ID"] == "<preview.4@mailcast.example>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<https://t.mailcast.example/u/")
    assert "<mailto:unsub@mailcast.example?subject=unsubscribe" in headers["List-Unsubscribe"]
    assert headers["X-Campaign"] == "spring C000003"
    assert not {"From", "To", "Subject", "Reply-To", "Content-Type", "MIME-Version"} & set(headers)


def test_one_client_for_every_connection_of_the_process(messages: Messages) -> None:
    with FakeSendGrid() as fake:
        a, b = transport(fake.base_url), transport(fake.base_url)
        a.open()
        b.open()
        assert a._client is b._client
        for i in range(4):
            (a if i % 2 else b).send(SENDER, messages.address(i), messages[i])
        assert len(fake.received) == 4


def test_url_forms() -> None:
    assert SendGridConfig.from_url("sendgrid://", KEY).endpoint.base_url == (
        "https://api.sendgrid.com"
    )
    eu = SendGridConfig.from_url("sendgrid://?region=eu&timeout=5", KEY)
    assert (eu.endpoint.base_url, eu.endpoint.timeout) == ("https://api.eu.sendgrid.com", 5.0)
    local = SendGridConfig.from_url("sendgrid://?base_url=http://127.0.0.1:8025/", KEY)
    assert local.endpoint.base_url == "http://127.0.0.1:8025"
    assert KEY not in repr(local) and KEY not in local.endpoint.where
    for bad in (
        "sendgrid://key:secret@api.sendgrid.com",
        "sendgrid://?region=mars",
        "sendgrid://?colour=red",
        "sendgrid://?timeout=soon",
        "sendgrid://api.sendgrid.com",
        "sendgrid://?base_url=ftp://x",
    ):
        with pytest.raises(SpecError) as caught:
            SendGridConfig.from_url(bad, KEY)
        assert "secret" not in str(caught.value)
    with pytest.raises(SpecError, match="no SendGrid API key"):
        SendGridConfig.from_url("sendgrid://", None)


def test_block() -> None:
    block = SendGridAccount(api_key=KEY, region="eu", timeout=5)
    assert block.to_config() == SendGridConfig.create(KEY, region="eu", timeout=5)
    for text in (repr(block), block.model_dump_json(), repr(block.to_config())):
        assert KEY not in text
