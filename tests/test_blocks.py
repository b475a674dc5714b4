"""The SmtpServer Prefect block: fields, secrets, and a save/load round trip on a real server."""

from __future__ import annotations

import inspect

import mailcast.blocks
import pytest
from mailcast.blocks import AmazonSes, MailgunAccount, MailjetAccount, SendGridAccount, SmtpServer
from mailcast.blocks.api_account import ApiAccount
from prefect.blocks.core import Block
from pydantic import SecretStr, ValidationError

from mailcast.transport.smtp import SmtpConfig

PASSWORD = "bl0ck-Secret!"


def test_to_config_round_trip() -> None:
    block = SmtpServer(
        host="smtp.example.org",
        port=465,
        security="ssl",
        username="news",
        password=SecretStr(PASSWORD),
        timeout=12.5,
        verify_tls=False,
    )
    assert block.to_config() == SmtpConfig(
        host="smtp.example.org",
        port=465,
        security="ssl",
        username="news",
        password=SecretStr(PASSWORD),
        timeout=12.5,
        verify_tls=False,
    )


def test_defaults() -> None:
    block = SmtpServer(host="relay.local")
    config = block.to_config()
    assert (config.port, config.security, config.timeout, config.verify_tls) == (
        587,
        "starttls",
        30.0,
        True,
    )
    assert config.username is None and config.password is None
    assert SmtpServer(host="h", username="").to_config().username is None


def test_password_is_secret_and_masked() -> None:
    block = SmtpServer(host="h", username="u", password=SecretStr(PASSWORD))
    assert isinstance(block.password, SecretStr)
    assert SmtpServer.model_validate({"host": "h", "password": PASSWORD}).password == block.password
    assert block.password.get_secret_value() == PASSWORD
    for text in (repr(block), str(block), block.model_dump_json(), repr(block.to_config())):
        assert PASSWORD not in text
    assert "**********" in block.model_dump_json()


def test_block_register_finds_the_block() -> None:
    # `prefect block register -m mailcast.blocks` registers every Block class among the module's members

    found = [cls for _, cls in inspect.getmembers(mailcast.blocks) if Block.is_block_class(cls)]
    assert {SmtpServer, AmazonSes, SendGridAccount, MailgunAccount, MailjetAccount} <= set(found)
    assert ApiAccount not in found  # the API providers' base is no block type of its own
    # the OAuth2 credentials and the Gmail API
    assert {"GmailApi", "GoogleOAuth2", "MicrosoftOAuth2"} <= {cls.__name__ for cls in found}
    assert all(cls.get_block_type_slug().startswith("mailcast-") for cls in found)


def test_block_metadata_and_descriptions() -> None:
    assert SmtpServer.get_block_type_slug() == "mailcast-smtp-server"
    assert SmtpServer.get_block_type_name() == "mailcast SMTP server"
    fields = SmtpServer.model_fields
    for name in ("host", "port", "security", "username", "password", "timeout", "verify_tls"):
        assert fields[name].description, name
    schema = SmtpServer.model_json_schema()
    assert schema["properties"]["security"]["enum"] == ["none", "starttls", "ssl"]


@pytest.mark.parametrize("bad", [{"port": 0}, {"port": 70000}, {"security": "tls"}, {"timeout": 0}])
def test_invalid_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SmtpServer.model_validate({"host": "h", **bad})


@pytest.mark.slow
def test_save_and_load_on_a_prefect_server(prefect_harness: None) -> None:
    SmtpServer(host="smtp.example.org", username="news", password=SecretStr(PASSWORD)).save(
        "mailcast-test", overwrite=True
    )
    loaded = SmtpServer.load("mailcast-test")
    assert isinstance(loaded, SmtpServer)
    assert loaded.password is not None
    assert loaded.password.get_secret_value() == PASSWORD
    assert loaded.to_config() == SmtpConfig(
        host="smtp.example.org", port=587, username="news", password=SecretStr(PASSWORD)
    )
