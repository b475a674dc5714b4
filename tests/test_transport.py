"""The SMTP and outbox transports, against real SMTP servers on loopback (no mocked smtplib)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
from pydantic import SecretStr

from mailcast.capture import CaptureServer
from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    SmtpReplyError,
    SpecError,
    TlsError,
    TransportError,
)
from mailcast.transport.base import Reply, Transport
from mailcast.transport.outbox import OutboxTransport
from mailcast.transport.smtp import SmtpConfig, SmtpTransport, is_auth_reply
from tests.smtp_faults import FaultyServer, Rule, self_signed_context

SENDER = "news@example.org"
PASSWORD = "s3cret-Pa55word"


def make_message(recipient: str, n: int = 0, sender: str = SENDER) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = f"Hello #{n}"
    msg.set_content(f"Dear reader,\n\nmessage {n}.\n.\n..a line starting with dots\n")
    return msg.as_bytes(policy=policy.SMTP)


def transport_for(server: CaptureServer, **overrides: object) -> SmtpTransport:
    overrides.setdefault("timeout", 2.0)
    return SmtpTransport(server.config(**overrides))


@pytest.fixture
def capture() -> Iterator[CaptureServer]:
    with CaptureServer() as server:
        yield server


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    return self_signed_context(tmp_path_factory.mktemp("tls"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the happy path --------------------------------------------------------------------------


def test_fifty_messages_on_one_connection(capture: CaptureServer) -> None:
    transport: Transport = transport_for(capture)  # structurally a Transport (checked by mypy)
    sent = []
    try:
        for n in range(50):
            rcpt = f"reader{n}@example.org"
            message = make_message(rcpt, n)
            reply = transport.send(SENDER, rcpt, message)
            assert reply.code == 250
            assert reply.text.startswith("2.0.0 Ok: queued as ")
            sent.append((rcpt, message))
    finally:
        transport.close()
    assert capture.connections == 1
    got = capture.messages
    assert len(got) == 50
    for (rcpt, message), captured in zip(sent, got, strict=True):
        assert captured.mail_from == SENDER
        assert captured.rcpt_tos == (rcpt,)
        assert captured.data.removesuffix(b"\r\n") == message.removesuffix(b"\r\n")
        assert captured.message()["Subject"] == message_subject(message)


def message_subject(message: bytes) -> str:
    return str(BytesParser(policy=policy.default).parsebytes(message)["Subject"])


def test_bare_lf_is_sent_as_crlf(capture: CaptureServer) -> None:
    with transport_for(capture) as transport:
        transport.send(SENDER, "a@example.org", b"Subject: x\n\nline 1\nline 2\r\n")
    assert capture.messages[0].data == b"Subject: x\r\n\r\nline 1\r\nline 2\r\n"


def test_close_is_idempotent_and_send_reopens(capture: CaptureServer) -> None:
    transport = transport_for(capture)
    transport.close()
    transport.send(SENDER, "a@example.org", make_message("a@example.org"))
    transport.close()
    transport.close()
    transport.send(SENDER, "b@example.org", make_message("b@example.org"))
    transport.close()
    assert capture.connections == 2
    assert len(capture.messages) == 2


def test_save_dir_writes_eml_files(tmp_path: Path) -> None:
    server = CaptureServer(save_dir=tmp_path / "caught")
    with server, transport_for(server) as transport:
        transport.send(SENDER, "a@example.org", make_message("a@example.org", 1))
        transport.send(SENDER, "b@example.org", make_message("b@example.org", 2))
    files = sorted((tmp_path / "caught").glob("*.eml"))
    assert [f.name for f in files] == ["000001-a@example.org.eml", "000002-b@example.org.eml"]
    assert server.messages[1].path == files[1]
    parsed = BytesParser(policy=policy.default).parsebytes(files[1].read_bytes())
    assert parsed["To"] == "b@example.org"


# -- refusals: exact code and stage, and the connection stays usable --------------------------


@pytest.mark.parametrize(
    ("rule", "stage", "code", "permanent"),
    [
        (Rule("MAIL", reply="451 4.3.0 Try again later"), "MAIL", 451, False),
        (Rule("MAIL", reply="553 5.7.1 Sender rejected"), "MAIL", 553, True),
        (Rule("RCPT", reply="452 4.2.2 Mailbox full"), "RCPT", 452, False),
        (Rule("RCPT", reply="550 5.1.1 No such user"), "RCPT", 550, True),
        (Rule("DATA_CMD", reply="454 4.3.0 Not now"), "DATA", 454, False),
        (Rule("DATA", reply="554 5.7.1 Looks like spam"), "DATA", 554, True),
        (Rule("DATA", reply="451 4.7.1 Greylisted"), "DATA", 451, False),
    ],
)
def test_refusal_maps_to_code_and_stage(rule: Rule, stage: str, code: int, permanent: bool) -> None:
    rule.address = "bad@example.org"
    if rule.stage == "MAIL":
        rule.address = "bad-sender@example.org"
    with FaultyServer(rule) as server, transport_for(server) as transport:
        transport.send(SENDER, "ok@example.org", make_message("ok@example.org", 1))
        sender = "bad-sender@example.org" if rule.stage == "MAIL" else SENDER
        with pytest.raises(SmtpReplyError) as info:
            transport.send(sender, "bad@example.org", make_message("bad@example.org", 2))
        err = info.value
        assert (err.code, err.stage, err.permanent) == (code, stage, permanent)
        assert err.where == f"127.0.0.1:{server.port}"
        assert rule.reply is not None and err.text == rule.reply[4:]
        assert not isinstance(err, ConnectionLost)
        # RSET (or the end of DATA) left the connection clean: the next message goes through
        reply = transport.send(SENDER, "ok@example.org", make_message("ok@example.org", 3))
        assert reply.code == 250
    assert server.connections == 1
    assert server.accepted_count("ok@example.org") == 2
    assert server.accepted_count("bad@example.org") == 0


def test_first_attempts_of_an_address_fail_then_succeed() -> None:
    rule = Rule("RCPT", reply="450 4.2.0 Mailbox busy", address="busy@example.org", times=2)
    with FaultyServer(rule) as server, transport_for(server) as transport:
        for _ in range(2):
            with pytest.raises(SmtpReplyError) as info:
                transport.send(SENDER, "busy@example.org", make_message("busy@example.org"))
            assert (info.value.code, info.value.stage) == (450, "RCPT")
        assert transport.send(SENDER, "busy@example.org", make_message("busy@example.org")).code
    assert server.attempts("RCPT", "busy@example.org") == 3
    assert server.accepted_count("busy@example.org") == 1
    assert server.connections == 1


def test_421_at_rcpt_closes_and_next_send_reconnects() -> None:
    rule = Rule("RCPT", reply="421 4.3.2 Shutting down", times=1, nth=2)
    with FaultyServer(rule) as server, transport_for(server) as transport:
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        with pytest.raises(SmtpReplyError) as info:
            transport.send(SENDER, "b@example.org", make_message("b@example.org"))
        assert (info.value.code, info.value.stage, info.value.permanent) == (421, "RCPT", False)
        assert not transport.is_open
        transport.send(SENDER, "b@example.org", make_message("b@example.org"))
    assert server.connections == 2
    assert server.accepted_count("b@example.org") == 1


def test_per_connection_limit_then_reconnect() -> None:
    """A 421 at MAIL on a connection that carried messages (a per-connection limit): nothing of
    the message was accepted, so the transport sends it once more at once on a fresh
    connection; the caller sees no refusal and nothing is sent twice."""
    with FaultyServer(messages_per_connection=3) as server, transport_for(server) as transport:
        outcomes = []
        for n in range(7):
            try:
                transport.send(SENDER, f"r{n}@example.org", make_message(f"r{n}@example.org"))
                outcomes.append(250)
            except SmtpReplyError as exc:
                assert exc.stage == "MAIL"
                outcomes.append(exc.code)
    assert outcomes == [250] * 7
    assert server.connections == 3
    assert len(server.messages) == 7
    assert all(server.accepted_count(f"r{n}@example.org") == 1 for n in range(7))


def test_421_at_mail_on_a_fresh_connection_is_a_refusal() -> None:
    """The one retry is for a reused connection only: a 421 to the first MAIL of a connection
    is a refusal like any other."""
    rule = Rule("MAIL", reply="421 4.3.2 Shutting down", times=1, nth=1)
    with FaultyServer(rule) as server, transport_for(server) as transport:
        with pytest.raises(SmtpReplyError) as info:
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        assert (info.value.code, info.value.stage) == (421, "MAIL")
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
    assert server.connections == 2
    assert server.accepted_count("a@example.org") == 1


def test_421_greeting_is_a_connect_error_then_connects() -> None:
    # Not about any message (no SmtpReplyError that would use up a recipient's attempts): the
    # sender backs off on ConnectError and tries again.
    rule = Rule("CONNECT", reply="421 4.3.2 Too busy, try later", times=2)
    with FaultyServer(rule) as server:
        transport = transport_for(server)
        for _ in range(2):
            with pytest.raises(ConnectError) as info:
                transport.send(SENDER, "a@example.org", make_message("a@example.org"))
            assert "refused the connection: 421 4.3.2 Too busy, try later" in str(info.value)
            assert f"127.0.0.1:{server.port}" in str(info.value)
            assert "busy" in info.value.hint
            assert (info.value.code, info.value.busy) == (421, True)  # the engine's slow-down
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        transport.close()
    assert server.connections == 3
    assert server.accepted_count("a@example.org") == 1


def test_554_greeting_is_a_connect_error() -> None:
    rule = Rule("CONNECT", reply="554 5.7.1 No SMTP service here", close=True)
    with FaultyServer(rule) as server, pytest.raises(ConnectError) as info:
        transport_for(server).open()
    assert "refused the connection: 554 5.7.1 No SMTP service here" in str(info.value)
    assert (info.value.code, info.value.busy) == (554, False)


# -- dropped connections ---------------------------------------------------------------------


def test_drop_during_data_is_connection_lost_then_reconnects() -> None:
    with FaultyServer(Rule("DATA", drop=True, nth=3)) as server, transport_for(server) as transport:
        for n in range(2):
            transport.send(SENDER, f"r{n}@example.org", make_message(f"r{n}@example.org"))
        with pytest.raises(ConnectionLost) as info:
            transport.send(SENDER, "r2@example.org", make_message("r2@example.org"))
        err = info.value
        assert isinstance(err, DeliveryRefused)
        assert (err.code, err.stage, err.permanent) == (0, "DATA", False)
        assert "during DATA" in err.text
        assert err.where == f"127.0.0.1:{server.port}"
        assert not transport.is_open
        for n in range(3, 5):
            transport.send(SENDER, f"r{n}@example.org", make_message(f"r{n}@example.org"))
    assert server.connections == 2
    assert server.accepted_count("r2@example.org") == 0
    assert len(server.messages) == 4


def test_drop_for_an_address_at_data() -> None:
    rule = Rule("DATA", drop=True, address="cursed@example.org", times=1)
    with FaultyServer(rule) as server, transport_for(server) as transport:
        with pytest.raises(ConnectionLost):
            transport.send(SENDER, "cursed@example.org", make_message("cursed@example.org"))
        transport.send(SENDER, "cursed@example.org", make_message("cursed@example.org"))
    assert server.accepted_count("cursed@example.org") == 1


def test_idle_connection_closed_by_server_is_retried_transparently() -> None:
    # The server hung up between two messages (found at MAIL of the next one): nothing of that
    # message was accepted, so send() reconnects and sends it without an error.
    with FaultyServer(Rule("MAIL", drop=True, nth=2)) as server, transport_for(server) as transport:
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        assert transport.send(SENDER, "b@example.org", make_message("b@example.org")).code == 250
    assert server.connections == 2
    assert [m.rcpt_tos for m in server.messages] == [("a@example.org",), ("b@example.org",)]


def test_drop_at_mail_of_a_fresh_connection_is_connection_lost() -> None:
    with (
        FaultyServer(Rule("MAIL", drop=True, times=1)) as server,
        transport_for(server) as transport,
    ):
        with pytest.raises(ConnectionLost, match="during MAIL"):
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
    assert server.connections == 2


def test_slow_server_times_out_then_recovers() -> None:
    rule = Rule("DATA", delay=0.6, times=1)
    with FaultyServer(rule) as server, transport_for(server, timeout=0.2) as transport:
        with pytest.raises(ConnectionLost, match="during DATA: timed out"):
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        transport.send(SENDER, "b@example.org", make_message("b@example.org"))
    assert server.accepted_count("b@example.org") == 1


def test_a_delay_within_the_timeout_is_just_slow() -> None:
    with FaultyServer(Rule("RCPT", delay=0.05)) as server, transport_for(server) as transport:
        assert transport.send(SENDER, "a@example.org", make_message("a@example.org")).code == 250


# -- connecting ------------------------------------------------------------------------------


def test_closed_port_is_a_connect_error() -> None:
    port = free_port()
    transport = SmtpTransport(SmtpConfig("127.0.0.1", port, security="none", timeout=2))
    with pytest.raises(ConnectError) as info:
        transport.send(SENDER, "a@example.org", b"Subject: x\r\n\r\nx\r\n")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "cannot connect" in str(info.value)
    assert info.value.hint


def test_no_greeting_is_a_connect_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        transport = SmtpTransport(SmtpConfig("127.0.0.1", port, security="none", timeout=0.3))
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}"):
            transport.open()


# -- authentication --------------------------------------------------------------------------


def test_login_succeeds_with_the_right_password() -> None:
    with CaptureServer(username="mailer", password=PASSWORD) as server:
        with transport_for(server) as transport:
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        assert server.accepted_count("a@example.org") == 1


def test_wrong_password_is_auth_error_without_the_password() -> None:
    with CaptureServer(username="mailer", password="the-right-one") as server:
        transport = transport_for(server, password=SecretStr(PASSWORD))
        with pytest.raises(AuthError) as info:
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        err = info.value
        assert err.where == f"127.0.0.1:{server.port}"
        assert "authentication failed for user mailer: 535" in str(err)
        for text in (str(err), repr(err), err.one_line(), repr(err.args), str(transport)):
            assert PASSWORD not in text
        assert err.__cause__ is None and err.__suppress_context__
        assert not transport.is_open
    assert server.messages == []


def test_auth_rule_failure() -> None:
    rule = Rule("AUTH", reply="454 4.7.0 Temporary authentication failure")
    server = FaultyServer(rule, username="mailer", password=PASSWORD)
    with server, pytest.raises(AuthError, match="454"):
        transport_for(server).open()


def test_username_but_no_auth_offered_hints_at_security(capture: CaptureServer) -> None:
    transport = transport_for(capture, username="mailer", password=SecretStr(PASSWORD))
    with pytest.raises(AuthError) as info:
        transport.open()
    assert "does not offer AUTH" in str(info.value)
    assert "security=starttls or ssl" in info.value.hint
    assert PASSWORD not in info.value.one_line()


def test_server_requiring_auth_refuses_mail_without_login() -> None:
    """530 at MAIL is the sender's problem, not a refusal of this message: an AuthError."""
    with CaptureServer(username="mailer", password=PASSWORD) as server:
        transport = transport_for(server, username=None, password=None)
        with pytest.raises(AuthError) as info:
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        transport.close()
    assert str(info.value) == (
        f"127.0.0.1:{server.port}: the server refused to send without valid authentication:"
        " 530 5.7.0 Authentication required (at MAIL)"
    )
    assert "smtp://USER@HOST:PORT" in info.value.hint
    assert "MAILCAST_SMTP_PASSWORD" in info.value.hint


@pytest.mark.parametrize(
    ("rule", "stage"),
    [
        (Rule("MAIL", reply="535 5.7.8 Authentication credentials invalid"), "MAIL"),
        (Rule("RCPT", reply="530 5.7.0 Authentication required"), "RCPT"),
        (Rule("RCPT", reply="550 5.7.0 Must authenticate before relaying"), "RCPT"),
        (Rule("DATA", reply="554 5.7.9 Authentication mechanism is too weak"), "DATA"),
        (Rule("DATA_CMD", reply="538 5.7.11 Encryption required"), "DATA"),
    ],
)
def test_authentication_class_replies_at_any_stage_are_auth_errors(rule: Rule, stage: str) -> None:
    with FaultyServer(rule) as server, transport_for(server) as transport:
        with pytest.raises(AuthError, match=rf"\(at {stage}\)$"):
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        assert not transport.is_open
    assert server.messages == []


@pytest.mark.parametrize(
    ("code", "text", "auth"),
    [
        (530, "5.7.0 Authentication required", True),
        (535, "Authentication failed", True),
        (534, "5.7.9 Please log in with your web browser", True),
        (538, "5.7.11 Encryption required for requested authentication mechanism", True),
        (550, "5.7.8 Error: authentication failed", True),
        (451, "4.7.12 A password transition is needed", True),
        (550, "5.7.0 Must authenticate", True),
        (550, "5.7.1 Sender address rejected: not owned by user", False),
        (550, "5.7.0 Message rejected as spam", False),
        (550, "5.1.1 No such user", False),
        (454, "4.7.0 TLS not available due to local problem", False),
        (250, "2.7.0 Authentication successful", False),
    ],
)
def test_is_auth_reply(code: int, text: str, auth: bool) -> None:
    assert is_auth_reply(code, text) is auth


# -- TLS -------------------------------------------------------------------------------------


def test_starttls_not_offered_is_tls_error(capture: CaptureServer) -> None:
    with pytest.raises(TlsError, match="does not offer STARTTLS") as info:
        transport_for(capture, security="starttls").open()
    assert f"127.0.0.1:{capture.port}" in str(info.value)


def test_starttls_advertised_but_refused_is_tls_error() -> None:
    server = FaultyServer(advertise_starttls=True)
    with server, pytest.raises(TlsError, match="STARTTLS refused: 454"):
        transport_for(server, security="starttls").open()


def test_starttls_accepted_then_dropped_is_tls_error() -> None:
    server = FaultyServer(Rule("STARTTLS", drop=True), advertise_starttls=True)
    with server, pytest.raises(TlsError, match="TLS handshake failed"):
        transport_for(server, security="starttls").open()


def test_starttls_with_real_tls(tls_files: tuple[ssl.SSLContext, Path]) -> None:
    context, _ = tls_files
    with FaultyServer(tls_context=context, username="mailer", password=PASSWORD) as server:
        assert server.url.endswith("?security=starttls&verify=false")
        with transport_for(server) as transport:  # verify_tls=False for the self-signed cert
            transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        # with verification on, the self-signed certificate is refused
        with pytest.raises(TlsError, match="certificate verification failed"):
            transport_for(server, verify_tls=True).open()
    assert server.accepted_count("a@example.org") == 1


def test_starttls_verified_with_a_trusted_certificate(
    tls_files: tuple[ssl.SSLContext, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context, cert_path = tls_files
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_path))  # trust our own CA
    server = CaptureServer(tls_context=context)
    with server, transport_for(server, verify_tls=True) as transport:
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
    assert server.accepted_count("a@example.org") == 1


def test_implicit_tls(tls_files: tuple[ssl.SSLContext, Path]) -> None:
    context, _ = tls_files
    with CaptureServer(ssl_context=context) as server:
        assert server.url.startswith("smtp://127.0.0.1:") and "security=ssl" in server.url
        config = SmtpConfig.from_url(server.url)
        assert (config.security, config.verify_tls) == ("ssl", False)
        transport = SmtpTransport(config)
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
        transport.close()
    assert server.accepted_count("a@example.org") == 1


def test_ssl_against_a_plain_server_is_tls_error(capture: CaptureServer) -> None:
    with pytest.raises(TlsError):
        transport_for(capture, security="ssl").open()


# -- SMTPUTF8 --------------------------------------------------------------------------------


def test_non_ascii_address_uses_smtputf8(capture: CaptureServer) -> None:
    rcpt = "jörg@exämple.org"
    with transport_for(capture) as transport:
        transport.send(SENDER, rcpt, make_message(rcpt))
        transport.send("grüße@example.org", "a@example.org", make_message("a@example.org"))
    first, second = capture.messages
    assert first.rcpt_tos == (rcpt,)
    assert "SMTPUTF8" in first.mail_options
    assert second.mail_from == "grüße@example.org"
    assert first.message()["To"] == rcpt


def test_non_ascii_address_without_smtputf8_is_permanent_553() -> None:
    with CaptureServer(smtputf8=False) as server, transport_for(server) as transport:
        with pytest.raises(SmtpReplyError) as info:
            transport.send(SENDER, "jörg@exämple.org", make_message("x@example.org"))
        assert (info.value.code, info.value.stage, info.value.permanent) == (553, "MAIL", True)
        assert not info.value.from_server  # mailcast's own refusal: never a bounce
        transport.send(SENDER, "a@example.org", make_message("a@example.org"))
    assert server.connections == 1


# -- the outbox ------------------------------------------------------------------------------


def test_outbox_writes_parseable_files(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "box"
    transport: Transport = OutboxTransport(folder)
    assert folder.is_dir() and transport.where == str(folder)
    reply = transport.send(SENDER, "Ann Lee <ann@example.org>", make_message("ann@example.org"))
    assert reply.code == 250
    path = Path(reply.text.removeprefix("written to "))
    assert path.parent == folder and path.suffix == ".eml"
    assert "/" not in path.name and " " not in path.name and "<" not in path.name
    parsed = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert parsed["To"] == "ann@example.org"
    assert "message 0" in parsed.get_content()


def test_outbox_writers_never_clobber_each_other(tmp_path: Path) -> None:
    def write(worker: int) -> None:
        transport = OutboxTransport(tmp_path)
        for n in range(20):
            transport.send(
                SENDER, "same@example.org", make_message("same@example.org", worker * 100 + n)
            )

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    files = sorted(tmp_path.glob("*.eml"))
    assert len(files) == 80
    assert not list(tmp_path.glob(".tmp-*"))
    # the same message again is the same file, not a new one
    again = OutboxTransport(tmp_path).send(
        SENDER, "same@example.org", make_message("same@example.org", 0)
    )
    assert Path(again.text.removeprefix("written to ")) in files
    assert len(list(tmp_path.glob("*.eml"))) == 80


def test_outbox_named_file(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path)
    reply = transport.send(SENDER, "a@example.org", b"Subject: x\r\n\r\nx\r\n", name="run 7/000042")
    assert reply == Reply(250, f"written to {tmp_path / 'run_7_000042.eml'}")


def test_outbox_write_failure_is_a_transport_error(tmp_path: Path) -> None:
    transport = OutboxTransport(tmp_path)
    (tmp_path / "taken.eml").mkdir()  # a directory where the file should go
    with pytest.raises(TransportError, match=r"cannot write taken\.eml"):
        transport.send(SENDER, "a@example.org", b"x\r\n", name="taken")


# -- SmtpConfig ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.org", ("mail.example.org", 587, "starttls", None, 30.0, True)),
        ("smtp://localhost?security=none", ("localhost", 25, "none", None, 30.0, True)),
        ("smtp://u@h:2525?security=none", ("h", 2525, "none", "u", 30.0, True)),
        ("smtp://h?security=ssl", ("h", 465, "ssl", None, 30.0, True)),
        ("smtps://h", ("h", 465, "ssl", None, 30.0, True)),
        ("smtps://user@h:4650?verify=false", ("h", 4650, "ssl", "user", 30.0, False)),
        ("smtp://h:465", ("h", 465, "ssl", None, 30.0, True)),
        ("SMTP://H:587/?Security=STARTTLS&timeout=2.5", ("h", 587, "starttls", None, 2.5, True)),
        ("smtp://me%40example.org@h", ("h", 587, "starttls", "me@example.org", 30.0, True)),
        (
            "smtp://me@example.org@h:25?security=none",
            ("h", 25, "none", "me@example.org", 30.0, True),
        ),
        ("smtp://[::1]:2525?security=none&verify=0", ("::1", 2525, "none", None, 30.0, False)),
    ],
)
def test_from_url(url: str, expected: tuple[object, ...]) -> None:
    config = SmtpConfig.from_url(url)
    got = (config.host, config.port, config.security, config.username, config.timeout)
    assert (*got, config.verify_tls) == expected
    assert config.password is None


def test_from_url_where_and_ipv6() -> None:
    assert SmtpConfig.from_url("smtp://h:2525").where == "h:2525"
    assert SmtpConfig.from_url("smtp://[::1]:2525").where == "[::1]:2525"
    assert SmtpConfig.from_url("smtp://h?local_hostname=me.example.org").local_hostname == (
        "me.example.org"
    )


def test_from_url_password_sources() -> None:
    in_url = SmtpConfig.from_url("smtp://u:p%40ss@h")
    assert in_url.password is not None and in_url.password.get_secret_value() == "p@ss"
    from_env = SmtpConfig.from_url("smtp://u:p%40ss@h", password="from-env")
    assert from_env.password is not None and from_env.password.get_secret_value() == "from-env"
    secret = SmtpConfig.from_url("smtp://u@h", password=SecretStr("x"))
    assert secret.password == SecretStr("x")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h", "smtp:// or smtps://"),
        ("h:25", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        ("smtp://h:abc", "Port"),
        ("smtp://h:70000", "Port"),
        ("smtp://h:0", "1-65535"),
        ("smtp://h?security=tls", "security must be one of"),
        ("smtps://h?security=starttls", "smtps:// means security=ssl"),
        ("smtp://h?timeout=soon", "timeout must be a number"),
        ("smtp://h?timeout=0", "timeout must be > 0"),
        ("smtp://h?verify=maybe", "verify must be true or false"),
        ("smtp://h?securty=none", "unknown option 'securty'"),
        ("smtp://h?timeout=1&timeout=2", "given twice"),
        ("smtp://h/path", "unexpected path"),
        ("smtp://[::1", "invalid SMTP URL"),
    ],
)
def test_from_url_errors(url: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        SmtpConfig.from_url(url)
    assert problem in str(info.value)
    assert info.value.where == "--smtp"
    assert "MAILCAST_SMTP_PASSWORD" in info.value.hint


@pytest.mark.parametrize(
    "url", ["smtp://u:hunter2@h?security=tls", "smtp://u:hunter2@h:x", "smtp://u:hunter2@[::1"]
)
def test_from_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(SpecError) as info:
        SmtpConfig.from_url(url)
    assert "hunter2" not in info.value.one_line()
    assert "hunter2" not in repr(info.value)


def test_repr_never_shows_the_password() -> None:
    config = SmtpConfig.from_url(f"smtp://u:{PASSWORD}@h")
    transport = SmtpTransport(config)
    for text in (repr(config), str(config), repr(transport), str(transport), config.to_url()):
        assert PASSWORD not in text
    assert "**********" in repr(config)
    assert config.password is not None and config.password.get_secret_value() == PASSWORD


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SmtpConfig("h", 25, security="tls")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SmtpConfig("h", 0)
    plain = SmtpConfig("h", 25, password="pw")  # type: ignore[arg-type]
    assert isinstance(plain.password, SecretStr)
