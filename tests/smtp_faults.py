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
        Rule("DATA", keep=True, drop=True, nth=4),    # 4th message: kept, then the reply is lost
        messages_per_connection=10,                                  # then 421 and close
        advertise_starttls=True,                                     # ...and refuse it with 454
    )
    server.outage(10)         # down (port closed) for 10 s, then back on the same port
    server.add(*chaos_rules(random.Random(7), rate=0.05, timeout=1.0))  # random faults

Stages: CONNECT (before the greeting), EHLO, STARTTLS, AUTH, MAIL (address = the sender),
RCPT (address = the recipient), DATA_CMD (the DATA command, before 354), DATA (after the message
was received, before the final reply; address = any recipient).

What a rule does, in this order: at DATA with ``keep``, take the message (the server has it, like
a real server whose reply gets lost); sleep ``delay`` seconds (``asyncio.sleep``); close the connection
without a reply if ``drop``; answer ``reply`` instead of the normal answer (a reply starting with
421 also closes the connection afterwards, like real servers; force with ``close``). A rule with
only a ``delay`` then proceeds normally. ``when`` takes an ``Event`` for anything else.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import random
import ssl
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
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
    keep: bool = False  # DATA only: the message is received (recorded) before the fault
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
        self,
        smtp: CaptureSMTP,
        stage: str,
        addresses: tuple[str, ...],
        *,
        broken_tls: bool = False,
        keep: Callable[[], Awaitable[str]] | None = None,
    ) -> str | None:
        """Apply the first matching rule: return the reply to send instead of the normal one,
        or None to go on normally. A drop does not return. ``keep`` takes the message (DATA)."""
        rule = self.server._match(stage, addresses, smtp)
        if rule is None:
            return None
        kept = await keep() if rule.keep and keep is not None else None
        if rule.delay:
            await asyncio.sleep(rule.delay)
        if rule.drop:
            if broken_tls:  # agree to STARTTLS, then hang up instead of the handshake
                await smtp.push("220 2.0.0 Ready to start TLS")
            await drop_connection(smtp)
        if rule.reply is None:
            return kept  # the message was taken: its normal reply, not a second copy
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
        async def keep() -> str:
            return await super(FaultyHandler, self).handle_DATA(smtp, session, envelope)

        status = await self.fault(smtp, "DATA", tuple(envelope.rcpt_tos), keep=keep)
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

    def add(self, *rules: Rule) -> None:
        with self._lock:
            self.rules.extend(rules)

    def outage(self, seconds: float) -> threading.Thread:
        """Go down now (the listening port closes, open connections drop) and come back on the
        same port after ``seconds``, from a background thread (so a rule's ``when`` may call
        it). Returns the thread; ``join`` it to wait until the server is back."""

        def down_and_up() -> None:
            self.stop()
            time.sleep(seconds)
            self.start()

        thread = threading.Thread(target=down_and_up, name="smtp-outage", daemon=True)
        thread.start()
        return thread

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


def chaos_rules(rng: random.Random, *, rate: float, timeout: float) -> list[Rule]:
    """Rules that inject every per-message and per-connection fault at random, each with
    probability ``rate`` where it can happen: 421 on connect; 421/451/452/454 on MAIL, RCPT and
    DATA; 550/553/554 permanent rejections (decided once per address, so a rejected address
    stays rejected); a drop in the middle of DATA; a reply that never comes (longer than the
    client's ``timeout``, then a drop). ``rng`` is seeded by the caller; rules share it under a
    lock. Authentication and TLS failures are left out: they stop a run by design."""
    lock = threading.Lock()
    permanent: dict[str, str | None] = {}

    def chance(_event: Event) -> bool:
        with lock:
            return rng.random() < rate

    def rejected(reply: str, stage: str) -> Callable[[Event], bool]:
        def check(event: Event) -> bool:
            with lock:
                for address in event.addresses:
                    key = address.lower()
                    if key not in permanent:
                        # each address draws once: 5% of addresses are rejected, at one stage
                        permanent[key] = (
                            rng.choice(("RCPT550", "RCPT553", "DATA554"))
                            if (rng.random() < rate)
                            else None
                        )
                    if permanent[key] == f"{stage}{reply[:3]}":
                        return True
            return False

        return check

    rules = [Rule("CONNECT", reply="421 4.3.2 Too busy, try again later", when=chance)]
    stages: tuple[Stage, ...] = ("MAIL", "RCPT", "DATA")
    for stage in stages:
        for code, text in ((421, "4.7.0 Slow down"), (451, "4.3.0 Try again later"),
                           (452, "4.3.1 Insufficient system storage"),
                           (454, "4.7.0 Temporary failure")):  # fmt: skip
            rules.append(Rule(stage, reply=f"{code} {text}", when=chance))
    rules += [
        Rule("RCPT", reply="550 5.1.1 No such user", when=rejected("550", "RCPT")),
        Rule("RCPT", reply="553 5.1.3 Bad recipient address syntax", when=rejected("553", "RCPT")),
        Rule("DATA", reply="554 5.7.1 Message refused", when=rejected("554", "DATA")),
        Rule("DATA", drop=True, when=chance),
        Rule("DATA", delay=timeout * 1.5, drop=True, when=chance),
    ]
    return rules


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
