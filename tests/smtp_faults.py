"""A fault-injecting SMTP server for tests, built on ``mailcast.capture.CaptureServer``.

A ``FaultyServer`` behaves like the capture server except where one of its ``Rule``s matches.
Rules are checked in order at each *stage* of the conversation; the first one that matches
(and has not used up ``times``) fires::

    FaultyServer(
        Rule("CONNECT", reply="421 4.3.2 busy", times=2),            # first 2 connections refused
        Rule("RCPT", reply="550 5.1.1 no such user", address="gone@example.org"),
        Rule("RCPT", reply="451 4.3.0 try later", address="slow@example.org", times=1),
        Rule("DATA", drop=True, nth=3),                              # 3rd message: drop after data
        Rule("DATA", delay=0.5),                                     # a slow server
        messages_per_connection=10,                                  # then 421 and close
        advertise_starttls=True,                                     # ...and refuse it with 454
    )

Stages: CONNECT (before the greeting), EHLO, STARTTLS, AUTH, MAIL (address = the sender),
RCPT (address = the recipient), DATA_CMD (the DATA command, before 354), DATA (after the message
was received, before the final reply; address = any recipient).

What a rule does, in this order: sleep ``delay`` seconds (``asyncio.sleep``); close the connection
without a reply if ``drop``; answer ``reply`` instead of the normal answer (a reply starting with
421 also closes the connection afterwards, like real servers; force with ``close``). A rule with
only a ``delay`` then proceeds normally. ``when`` takes an ``Event`` for anything else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from aiosmtpd.smtp import MISSING, Envelope, Session

from mailcast.capture import CaptureHandler, CaptureServer, CaptureSMTP, drop_connection

Stage = Literal["CONNECT", "EHLO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA_CMD", "DATA"]


@dataclass(frozen=True)
class Event:
    """What a rule sees."""

    stage: str
    addresses: tuple[str, ...]  # MAIL: (sender,), RCPT: (recipient,), DATA*: the recipients
    connection: int  # 1-based number of the connection on this server
    on_connection: int  # messages accepted on this connection so far
    nth: int  # 1-based number of this event among all events of this stage on the server


@dataclass
class Rule:
    stage: Stage
    reply: str | None = None
    drop: bool = False
    delay: float = 0.0
    address: str | None = None
    nth: int | None = None
    times: int | None = None
    when: Callable[[Event], bool] | None = None
    close: bool | None = None
    fired: int = field(default=0, init=False)

    @property
    def closes(self) -> bool:
        if self.close is not None:
            return self.close
        return self.reply is not None and self.reply.startswith("421")

    def matches(self, event: Event) -> bool:
        if event.stage != self.stage:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        if self.address is not None and self.address.lower() not in {
            a.lower() for a in event.addresses
        }:
            return False
        if self.nth is not None and event.nth != self.nth:
            return False
        return self.when is None or self.when(event)


class FaultySMTP(CaptureSMTP):
    """Adds the STARTTLS and DATA_CMD stages, which aiosmtpd has no handler hooks for."""

    event_handler: FaultyHandler

    async def smtp_STARTTLS(self, arg: str) -> None:
        status = await self.event_handler.fault(self, "STARTTLS", (), broken_tls=True)
        if status is not None:
            await self.push(status)
            return
        if self.tls_context is None:  # advertised by advertise_starttls, but not available
            await self.push("454 4.7.0 TLS not available")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.envelope is not None and self.envelope.rcpt_tos and not arg:
            status = await self.event_handler.fault(self, "DATA_CMD", tuple(self.envelope.rcpt_tos))
            if status is not None:
                await self.push(status)
                return
        await super().smtp_DATA(arg)


class FaultyHandler(CaptureHandler):
    server: FaultyServer

    async def fault(
        self, smtp: CaptureSMTP, stage: str, addresses: tuple[str, ...], *, broken_tls: bool = False
    ) -> str | None:
        """Apply the first matching rule: return the reply to send instead of the normal one,
        or None to go on normally. A drop does not return."""
        rule = self.server._match(stage, addresses, smtp)
        if rule is None:
            return None
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.drop:
            if broken_tls:  # agree to STARTTLS, then hang up instead of the handshake
                await smtp.push("220 2.0.0 Ready to start TLS")
            await drop_connection(smtp)
        if rule.reply is None:
            return None
        if rule.closes:
            await smtp.push(rule.reply)
            await drop_connection(smtp)
        return rule.reply

    async def on_connect(self, smtp: CaptureSMTP) -> str | None:
        await super().on_connect(smtp)
        if not self.server._live:
            return None
        return await self.fault(smtp, "CONNECT", ())

    async def handle_EHLO(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        status = await self.fault(smtp, "EHLO", ())
        if status is not None:
            return [status]
        session.host_name = hostname  # aiosmtpd leaves this to a 5-argument EHLO hook
        if self.server.advertise_starttls and "250-STARTTLS" not in responses:
            responses.insert(len(responses) - 1, "250-STARTTLS")
        return responses

    async def handle_AUTH(
        self, smtp: CaptureSMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> Any:
        status = await self.fault(smtp, "AUTH", ())
        return MISSING if status is None else status

    async def handle_MAIL(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        status = await self.fault(smtp, "MAIL", (address,))
        if status is not None:
            return status
        return await super().handle_MAIL(smtp, session, envelope, address, mail_options)

    async def handle_RCPT(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        status = await self.fault(smtp, "RCPT", (address,))
        if status is not None:
            return status
        return await super().handle_RCPT(smtp, session, envelope, address, rcpt_options)

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        status = await self.fault(smtp, "DATA", tuple(envelope.rcpt_tos))
        if status is not None:
            return status
        return await super().handle_DATA(smtp, session, envelope)


class FaultyServer(CaptureServer):
    """A ``CaptureServer`` that misbehaves according to its rules (see the module doc)."""

    handler_class: ClassVar[type[CaptureHandler]] = FaultyHandler
    smtp_class: ClassVar[type[CaptureSMTP]] = FaultySMTP

    def __init__(
        self,
        *rules: Rule,
        messages_per_connection: int | None = None,
        advertise_starttls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rules: list[Rule] = list(rules)
        self.advertise_starttls = advertise_starttls
        if messages_per_connection is not None:
            limit = messages_per_connection
            self.rules.append(
                Rule(
                    "MAIL",
                    reply="421 4.7.0 Too many messages on this connection, closing",
                    when=lambda event: event.on_connection >= limit,
                )
            )
        self._stage_counts: Counter[str] = Counter()
        self._attempts: Counter[tuple[str, str]] = Counter()

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def attempts(self, stage: str, address: str | None = None) -> int:
        """How often the stage was reached (for ``address``: with that address)."""
        with self._lock:
            if address is None:
                return self._stage_counts[stage]
            return self._attempts[(stage, address.lower())]

    def _match(self, stage: str, addresses: tuple[str, ...], smtp: CaptureSMTP) -> Rule | None:
        with self._lock:
            self._stage_counts[stage] += 1
            for address in addresses:
                self._attempts[(stage, address.lower())] += 1
            event = Event(
                stage=stage,
                addresses=addresses,
                connection=smtp.connection,
                on_connection=smtp.accepted,
                nth=self._stage_counts[stage],
            )
            for rule in self.rules:
                if rule.matches(event):
                    rule.fired += 1
                    return rule
        return None


def self_signed_context(folder: Path, host: str = "127.0.0.1") -> tuple[ssl.SSLContext, Path]:
    """A server TLS context with a fresh self-signed certificate for ``host``; also returns the
    certificate's path (a client can trust it through SSL_CERT_FILE)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / "cert.pem"
    key_path = folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
