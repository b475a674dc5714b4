"""The Mailjet v3.1 transport against a local fake of ``POST /v3.1/send``: every answer's
outcome and a 1,000-recipient campaign with faults (tests/fakes/contract.py), the JSON it sends for a message mailcast built, the sandbox
flag, its URL."""

from __future__ import annotations

import base64

import pytest
from mailcast.blocks import MailjetAccount

from mailcast.errors import SpecError
from mailcast.transport.mailjet import MailjetConfig, MailjetTransport
from tests.fakes.contract import SENDER, Provider, provider_tests
from tests.fakes.mailjet_fake import FakeMailjet
from tests.fakes.messages import Messages

KEY, SECRET = "mj-public", "mj-private"
WRONG = "mj-wrong-private-0123"


def transport(
    base_url: str, good: bool = True, timeout: float = 5.0, sandbox: bool = False
) -> MailjetTransport:
    config = MailjetConfig.create(
        KEY, SECRET if good else WRONG, base_url=base_url, timeout=timeout, sandbox=sandbox
    )
    return MailjetTransport(config)


PROVIDER = Provider(
    FakeMailjet,
    transport,
    200,
    (SECRET, WRONG),
    rejected_words="is an invalid email address. (To[0].Email)",
    url=lambda base_url: f"mailjet://?base_url={base_url}",
    env={"MAILCAST_MAILJET_API_KEY": (KEY, KEY), "MAILCAST_MAILJET_SECRET_KEY": (SECRET, WRONG)},
)
globals().update(provider_tests(PROVIDER))  # every answer; 1,000-recipient campaigns


def test_the_message_is_sent_field_by_field(messages: Messages) -> None:
    with FakeMailjet() as fake:
        reply = transport(fake.base_url).send(SENDER, messages.address(5), messages[5])
        stored = fake.by_recipient(messages.address(5))
    mail = stored.fields
    assert reply.provider_message_id == stored.provider_id and stored.provider_id.isdigit()
    assert mail["From"] == {"Email": "sender@mailcast.example", "Name": "Test Sender"}
    assert mail["To"] == [{"Email": "person5@example.com"}]
    assert mail["ReplyTo"] == {"Email": "help@mailcast.example", "Name": "Help Désk"}
    assert mail["Subject"] == "Fïrst5, your code C000005"
    assert "Hello Fïrst5 Låst5" in mail["TextPart"]
    assert "<h1>Hello Fïrst5 Låst5</h1>" in mail["HTMLPart"]
    (attachment,) = mail["Attachments"]
    assert (attachment["Filename"], attachment["ContentType"]) == ("doc.pdf", "application/pdf")
    assert base64.b64decode(attachment["Base64Content"]) == messages.pdf
    headers = mail["Headers"]
    assert headers["Message-ID"] == "<preview.6@mailcast.example>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Unsubscribe"].startswith("<https://t.mailcast.example/u/")
    assert headers["X-Campaign"] == "spring C000005"


def test_sandbox_mode_is_checked_and_delivers_nothing(messages: Messages) -> None:
    with FakeMailjet() as fake:
        reply = transport(fake.base_url, sandbox=True).send(
            SENDER, messages.address(0), messages[0]
        )
        assert fake.received == [] and fake.sandboxed == 1
    assert (reply.code, reply.text) == (200, "success (sandbox)")


def test_url_forms() -> None:
    plain = MailjetConfig.from_url("mailjet://", KEY, SECRET)
    assert (plain.endpoint.base_url, plain.sandbox) == ("https://api.mailjet.com", False)
    sandbox = MailjetConfig.from_url("mailjet://?sandbox=yes&timeout=3", KEY, SECRET)
    assert (sandbox.sandbox, sandbox.endpoint.timeout) == (True, 3.0)
    assert SECRET not in repr(sandbox)
    for bad in ("mailjet://?sandbox=maybe", "mailjet://api.mailjet.com", "mailjet://?x=1"):
        with pytest.raises(SpecError):
            MailjetConfig.from_url(bad, KEY, SECRET)
    with pytest.raises(SpecError, match="secret key"):
        MailjetConfig.from_url("mailjet://", KEY, None)


def test_block() -> None:
    block = MailjetAccount(api_key=KEY, secret_key=SECRET, sandbox=True, base_url="http://h:1")
    expected = MailjetConfig.create(KEY, SECRET, sandbox=True, base_url="http://h:1")
    assert block.to_config() == expected
    for text in (repr(block), block.model_dump_json(), repr(block.to_config())):
        assert SECRET not in text and KEY not in text
