"""The outcomes every HTTP API transport must give against its fake, one check per answer.
Each provider's test module runs these with its fake and its transport."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailcast.errors import AuthError, ConnectError, ConnectionLost, DeliveryRefused, RefusalKind
from mailcast.transport.http_api import ApiTransport
from tests.fakes.http_fake import FakeApi, Fault
from tests.fakes.messages import Messages

SENDER = "bounces@mailcast.example"


@dataclass
class Provider:
    """A fake (``fake()``) and the transport to it: ``transport(base_url, good_key, timeout)``
    directly, or through the registry: ``url(base_url)`` with the credentials in the
    environment (``env``: variable → (the right value, a wrong one))."""

    fake: Callable[..., FakeApi]
    transport: Callable[[str, bool, float], ApiTransport]
    success_code: int
    secrets: tuple[str, ...]  # the credentials, which no message may show
    rejected_words: str  # what the refusal of a bad message says
    url: Callable[[str], str]
    env: dict[str, tuple[str, str]]

    def credentials(self, monkeypatch: pytest.MonkeyPatch, *, good: bool) -> None:
        for name, (right, wrong) in self.env.items():
            monkeypatch.setenv(name, right if good else wrong)


def send(provider: Provider, fake: FakeApi, messages: Messages, i: int, **kw: Any) -> Any:
    t = provider.transport(fake.base_url, kw.get("good", True), kw.get("timeout", 5.0))
    t.open()
    try:
        return t.send(SENDER, messages.address(i), messages[i])
    finally:
        t.close()


def refusal(provider: Provider, fault: Fault, messages: Messages) -> DeliveryRefused:
    with provider.fake(fault) as fake:
        with pytest.raises(DeliveryRefused) as caught:
            send(provider, fake, messages, 0)
        assert fake.count(messages.address(0)) == 0
        # the next message goes through on the same transport settings
        assert send(provider, fake, messages, 1).code == provider.success_code
    assert not isinstance(caught.value, ConnectionLost)
    no_secret(provider, str(caught.value))
    return caught.value


def no_secret(provider: Provider, text: str) -> None:
    for secret in provider.secrets:
        assert secret not in text


def check_accepted(provider: Provider, messages: Messages) -> None:
    with provider.fake() as fake:
        replies = [send(provider, fake, messages, i) for i in range(3)]
        for i, reply in enumerate(replies):
            stored = fake.by_recipient(messages.address(i))
            assert reply.code == provider.success_code
            assert reply.provider_message_id == stored.provider_id.strip("<>")
        assert fake.answered == {provider.success_code: 3}


def check_throttled(provider: Provider, messages: Messages) -> None:
    exc = refusal(provider, Fault("throttle", retry_after=7), messages)
    assert (exc.kind, exc.code) == (RefusalKind.THROTTLED, 429)
    assert "Retry-After 7s" in exc.text


def check_quota(provider: Provider, messages: Messages) -> None:
    exc = refusal(provider, Fault("quota"), messages)
    assert exc.kind is RefusalKind.THROTTLED


def check_server_error(provider: Provider, messages: Messages) -> None:
    exc = refusal(provider, Fault("error"), messages)
    assert (exc.kind, exc.code) == (RefusalKind.TEMPORARY, 500)


def check_rejected(provider: Provider, messages: Messages) -> None:
    exc = refusal(provider, Fault("reject"), messages)
    assert (exc.kind, exc.code) == (RefusalKind.PERMANENT, 400)
    assert provider.rejected_words in exc.text, exc.text


def check_bad_credentials(provider: Provider, messages: Messages) -> None:
    with provider.fake() as fake:
        with pytest.raises(AuthError) as caught:
            send(provider, fake, messages, 0, good=False)
        assert fake.received == []
    assert "401" in str(caught.value)
    no_secret(provider, caught.value.one_line())


def check_timeout_after_receipt(provider: Provider, messages: Messages) -> None:
    with provider.fake(Fault("timeout"), hang=1.0) as fake:
        with pytest.raises(ConnectionLost) as caught:
            send(provider, fake, messages, 0, timeout=0.3)
        assert caught.value.maybe_delivered
        assert fake.count(messages.address(0)) == 1  # the provider has it: never send it again
        assert send(provider, fake, messages, 1, timeout=0.3).code == provider.success_code


def check_unreachable(provider: Provider, messages: Messages) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        t = provider.transport(f"http://127.0.0.1:{port}", True, 2.0)
        with pytest.raises(ConnectError) as caught:
            t.send(SENDER, messages.address(0), messages[0])
    assert f"127.0.0.1:{port}" in str(caught.value)


# every mapping of issue 14, for a test module to parametrize over
CHECKS = [
    check_accepted,
    check_throttled,
    check_quota,
    check_server_error,
    check_rejected,
    check_bad_credentials,
    check_timeout_after_receipt,
    check_unreachable,
]


def provider_tests(provider: Provider, *, cli: bool = False) -> dict[str, Any]:
    """A provider's test module's tests: ``globals().update(provider_tests(PROVIDER))``;
    ``cli``: also a send and a resume through the CLI and the flow (slow: the path is the same
    for every provider, one runs it)."""
    from tests.fakes import campaign_run

    @pytest.fixture(scope="module")
    def messages(tmp_path_factory: pytest.TempPathFactory) -> Messages:
        return Messages(tmp_path_factory.mktemp("campaign"))

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_answers(check: Callable[[Provider, Messages], None], messages: Messages) -> None:
        check(provider, messages)

    def test_campaign_with_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        campaign_run.check_campaign_with_faults(tmp_path, monkeypatch, provider)

    def test_bad_credentials_stop_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        campaign_run.check_bad_credentials_stop_the_run(tmp_path, monkeypatch, provider)

    @pytest.mark.slow
    @pytest.mark.usefixtures("prefect_harness")
    def test_cli_send_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        campaign_run.check_cli_send_then_resume(tmp_path, monkeypatch, provider)

    tests = {
        "messages": messages,
        "test_answers": test_answers,
        "test_campaign_with_faults": test_campaign_with_faults,
        "test_bad_credentials_stop_the_run": test_bad_credentials_stop_the_run,
    }
    if cli:
        tests["test_cli_send_then_resume"] = test_cli_send_then_resume
    return tests
