"""The Amazon SES (v2) transport against moto's SES in server mode on loopback, with a
fault-injecting proxy in front for what moto does not do: throttling, a 5xx, an answer that
never comes after SES took the message, refused credentials."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailcast import errors
from mailcast.errors import AuthError, ConnectionLost, DeliveryRefused, RefusalKind, SpecError
from mailcast.settings import Settings
from mailcast.transport.factory import Target, check_target
from mailcast.transport.ses import SesSetup, SesTransport, client_for, setup_from_url
from tests.ses_server import REGION, SENDER, FaultProxy, moto_ses, sent_to, upstream

MESSAGE = (
    f"From: News <{SENDER}>\r\nTo: <{{to}}>\r\nSubject: hi\r\nMessage-ID: <{{to}}@m>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
)


def message(to: str) -> bytes:
    return MESSAGE.replace("{to}", to).encode()


@pytest.fixture(scope="module")
def ses() -> Iterator[tuple[str, FaultProxy]]:
    with moto_ses() as url, FaultProxy(upstream(url), timeout_delay=3.0) as proxy:
        yield url, proxy


def keys(endpoint: str, **changes: object) -> SesSetup:
    setup = SesSetup(
        region=REGION, access_key_id="AKIATEST", secret_access_key=SecretStr("test-secret"),
        endpoint_url=endpoint, timeout=10.0,
    )  # fmt: skip
    return replace(setup, **changes)  # type: ignore[arg-type]


def send(setup: SesSetup, to: str) -> object:
    transport = setup.new_transport()
    transport.open()
    try:
        return transport.send("bounce+x@mailcast.example", to, message(to))
    finally:
        transport.close()


def test_a_message_is_sent_raw_and_its_ses_id_returned(ses: tuple[str, FaultProxy]) -> None:
    moto, _ = ses
    reply = send(keys(moto), "alice@example.com")
    [stored] = sent_to("alice@example.com")
    assert reply.provider_message_id == stored.id  # type: ignore[attr-defined]
    assert reply.code == 200  # type: ignore[attr-defined]
    assert "Message-ID: <alice@example.com@m>" in stored.raw_data  # the bytes mailcast built
    # one client per process and settings, shared by every connection
    assert client_for(keys(moto)) is client_for(keys(moto))
    assert isinstance(keys(moto).new_transport(), SesTransport)


def test_answers_become_transport_neutral_outcomes(ses: tuple[str, FaultProxy]) -> None:
    _moto, proxy = ses
    setup = keys(proxy.url)
    cases = {
        "throttled@example.com": ("throttle", RefusalKind.THROTTLED, 429, "TooManyRequests"),
        "down@example.com": ("unavailable", RefusalKind.TEMPORARY, 503, "ServiceUnavailable"),
        "rejected@example.com": ("reject", RefusalKind.PERMANENT, 400, "MessageRejected: Email"),
    }
    for to, (fault, kind, code, text) in cases.items():
        proxy.fault(to, fault)
        with pytest.raises(DeliveryRefused) as err:
            send(setup, to)
        assert (err.value.kind, err.value.code) == (kind, code), to
        assert err.value.text.startswith(text) and err.value.stage == ""
        assert not isinstance(err.value, ConnectionLost)
        assert sent_to(to) == []
        send(setup, to)  # the fault was once: SES takes it now
        assert len(sent_to(to)) == 1

    # moto's own refusal: a sender that is not a verified identity
    with pytest.raises(DeliveryRefused) as err:
        transport = setup.new_transport()
        transport.send("x@y", "z@example.com", message("z@example.com").replace(
            SENDER.encode(), b"nobody@unverified.example"))  # fmt: skip
    assert err.value.kind is RefusalKind.PERMANENT and "MessageRejected" in err.value.text

    # SES took the message, its answer never came: maybe delivered (the row becomes unknown)
    proxy.fault("slow@example.com", "timeout")
    with pytest.raises(ConnectionLost) as lost:
        send(replace(setup, timeout=1.0), "slow@example.com")
    assert lost.value.maybe_delivered
    deadline = time.monotonic() + 10  # the proxy may still be handing it to SES
    while not sent_to("slow@example.com") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(sent_to("slow@example.com")) == 1

    # refused credentials stop the run
    proxy.bad_credentials = True
    try:
        with pytest.raises(AuthError) as auth:
            send(setup, "carol@example.com")
    finally:
        proxy.bad_credentials = False
    assert "UnrecognizedClientException" in str(auth.value)
    assert "test-secret" not in str(auth.value) and "ses:SendRawEmail" in auth.value.hint

    # nothing listening: cannot connect (the engine waits and tries again)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(errors.ConnectError):
        send(keys(closed), "dave@example.com")


def test_url_form_and_checks_without_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = setup_from_url("ses://eu-west-1?configuration_set=news&timeout=5", Settings())
    assert (setup.region, setup.configuration_set, setup.timeout) == ("eu-west-1", "news", 5.0)
    assert Target(url="ses://eu-west-1").describe() == "SES eu-west-1"
    for bad, problem in (
        ("ses://AKIA:secret@eu-west-1", "no keys in the URL"),
        ("ses://", "no region"),
        ("ses://eu-west-1?region=x", "unknown option 'region'"),
        ("ses://eu-west-1?timeout=0", "timeout must be > 0"),
    ):
        with pytest.raises(SpecError) as err:
            setup_from_url(bad, Settings())
        assert problem in str(err.value) and "secret" not in str(err.value)

    with pytest.raises(SpecError, match="not an AWS region name"):
        keys("").__class__(region="Europe").check()
    with pytest.raises(SpecError, match="not offered in region 'xx-nowhere-9'"):
        SesSetup(region="xx-nowhere-9").check()
    with pytest.raises(AuthError, match="half of the access key"):
        SesSetup(region="eu-west-1", access_key_id="AKIA").check()
    SesSetup(region="eu-west-1", access_key_id="AKIA", secret_access_key=SecretStr("s")).check()
    # the URL form takes the worker's AWS credentials: none here
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    with pytest.raises(AuthError, match="no AWS credentials found"):
        check_target(Target(url="ses://eu-west-1"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    assert check_target(Target(url="ses://eu-west-1")) == "SES eu-west-1"
    assert "env-secret" not in repr(SesSetup(region="x", secret_access_key=SecretStr("env-secret")))
    assert Target(url="ses://eu-west-1").limit_key() == "ses:eu-west-1"


def test_the_block_keeps_the_secret_key_secret() -> None:
    from mailcast.blocks import AmazonSes

    block = AmazonSes(
        region="eu-west-1", access_key_id="AKIAB", secret_access_key=SecretStr("blk-secret"),
        configuration_set="news",
    )  # fmt: skip
    setup = block.setup()
    assert (setup.region, setup.access_key_id, setup.configuration_set) == (
        "eu-west-1", "AKIAB", "news",
    )  # fmt: skip
    assert setup.secret_access_key is not None
    assert setup.secret_access_key.get_secret_value() == "blk-secret"
    for text in (repr(block), str(block), block.model_dump_json(), repr(setup), str(setup)):
        assert "blk-secret" not in text
    assert AmazonSes.get_block_type_slug() == "mailcast-amazon-ses"
    assert all(f.description for f in AmazonSes.model_fields.values())


def test_the_cli_sends_through_ses_chosen_by_url(
    ses: tuple[str, FaultProxy], prefect_harness: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``mailcast send --transport ses://REGION?endpoint_url=…`` with the worker's AWS
    credentials (the environment): each row sent once, SES's id on it, the run says so."""
    from typer.testing import CliRunner

    from mailcast.cli import app
    from mailcast.ledger.store import Ledger
    from tests.campaigns import people, write_campaign

    moto, _ = ses
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    spec = write_campaign(tmp_path / "c", people(4), attachments=False, name="by-url")
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    url = f"ses://{REGION}?endpoint_url={moto}"
    result = CliRunner().invoke(app, ["send", str(spec), "--send", "--transport", url, "--db", db])
    assert result.exit_code == 0, result.output
    assert "sent over Amazon SES" in result.stdout and f"via: SES {REGION}" in result.stdout
    [run] = Ledger(db).runs()
    for row in Ledger(db).deliveries(run.id):
        [stored] = sent_to(row["address"])
        assert (row["status"], row["provider_message_id"]) == ("sent", stored.id)
    assert "env-secret" not in (run.transport or "") + result.output
