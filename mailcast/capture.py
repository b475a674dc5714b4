"""An in-process SMTP server that accepts and records every message (``mailcast demo``, tests).

::

    with CaptureServer(save_dir=Path("caught")) as server:
        transport = SmtpTransport(SmtpConfig.from_url(server.url))
        transport.send("me@example.org", "you@example.org", message_bytes)
        assert server.messages[0].data == message_bytes

It runs aiosmtpd in a background thread on 127.0.0.1 (a free port is picked unless one is
given). Each accepted message is kept as a ``Captured`` (thread-safe list) and, with
``save_dir``, written there as ``NNNNNN-<recipient>.eml``.

Extending it (see ``tests/smtp_faults.py``): subclass ``CaptureHandler`` (the aiosmtpd handler:
``on_connect`` plus the ``handle_*`` hooks) and/or ``CaptureSMTP`` (one instance per
connection), and set ``handler_class`` / ``smtp_class`` on a ``CaptureServer`` subclass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
from collections import Counter
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException
from pydantic import SecretStr

from mailcast.transport.smtp import SmtpConfig

__all__ = ["CaptureHandler", "CaptureSMTP", "CaptureServer", "Captured", "drop_connection"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")
log = logging.getLogger(__name__)


class _HideAiosmtpdNoise(logging.Filter):
    """aiosmtpd 1.4 warns "Session.login_data is deprecated" on every successful AUTH, from its
    own code; nothing a caller can change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Session.login_data is deprecated")


logging.getLogger("mail.log").addFilter(_HideAiosmtpdNoise())


@dataclass(frozen=True)
class Captured:
    """One accepted message: the envelope and the exact bytes received (dot-unstuffed)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    queue_id: str = ""
    path: Path | None = None

    def message(self) -> EmailMessage:
        """The message parsed with the modern email API."""
        return cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(self.data))


class CaptureSMTP(SMTP):
    """aiosmtpd's SMTP protocol (one instance per connection) with a hook before the greeting.

    ``connection`` is the 1-based number of this connection on the server, ``accepted`` the
    number of messages accepted on it so far; handlers may use both.
    """

    connection: int = 0
    accepted: int = 0
    counted: bool = False  # counted among the server's open connections

    def _closing(self) -> None:
        if self.counted:
            self.counted = False
            self.event_handler.server._connection_closed()

    async def smtp_QUIT(self, arg: str) -> None:
        # Closed from here on: the client only closes its side (and, say, releases a
        # concurrency slot) after the reply, and connection_lost may come later than that.
        if not arg:
            self._closing()
        await super().smtp_QUIT(arg)

    def connection_lost(self, error: Exception | None) -> None:
        self._closing()
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        # aiosmtpd has no hook before its "220" greeting; ask the handler first, so that it can
        # refuse the connection ("421 busy") or stall it.
        status = await self.event_handler.on_connect(self)
        if status is not None:
            await self.push(status)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()


class CaptureHandler:
    """Accepts everything (after AUTH, if the server has credentials) and records it."""

    def __init__(self, server: CaptureServer) -> None:
        self.server = server

    async def on_connect(self, smtp: CaptureSMTP) -> str | None:
        """Called before the greeting; return a status line to refuse the connection with it."""
        smtp.connection = self.server._count_connection(smtp)
        return None

    async def handle_MAIL(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.server.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        smtp: CaptureSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, smtp: CaptureSMTP, session: Session, envelope: Envelope) -> str:
        captured = self.server._record(envelope)
        smtp.accepted += 1
        return f"250 2.0.0 Ok: queued as {captured.queue_id}"

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # a client that gave up the TLS handshake
            log.warning("TLS handshake failed: %s", error.__cause__ or error)
        else:
            log.exception("error in an SMTP session")
        return f"500 Error: ({type(error).__name__}) {error}"


class _Controller(Controller):
    """aiosmtpd's Controller with our SMTP class and support for port 0."""

    def __init__(self, handler: Any, *, smtp_class: type[SMTP], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._smtp_class = smtp_class

    def factory(self) -> SMTP:
        return self._smtp_class(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # aiosmtpd binds port 0 fine, but then "triggers" the server by connecting to port 0:
        # read the real port from the listening socket first.
        if self.port == 0 and self.server is not None:
            self.port = cast(asyncio.Server, self.server).sockets[0].getsockname()[1]
        super()._trigger_server()


class CaptureServer:
    """A capturing SMTP server on loopback, in a background thread. Use as a context manager.

    ``username``/``password``: require AUTH (PLAIN/LOGIN, offered without TLS; a wrong password
    gets ``535``). ``tls_context``: offer STARTTLS with that server context; ``ssl_context``:
    implicit TLS on connect (smtps). ``smtputf8=False`` hides SMTPUTF8.
    """

    handler_class: ClassVar[type[CaptureHandler]] = CaptureHandler
    smtp_class: ClassVar[type[CaptureSMTP]] = CaptureSMTP

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        save_dir: Path | str | None = None,
        username: str | None = None,
        password: str | SecretStr | None = None,
        tls_context: ssl.SSLContext | None = None,
        ssl_context: ssl.SSLContext | None = None,
        smtputf8: bool = True,
        data_size_limit: int = 64 * 1024 * 1024,
        server_hostname: str = "capture.mailcast.invalid",
        idle_timeout: float = 300.0,
    ) -> None:
        self.host = host
        self.port = port
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.username = username
        self.password = SecretStr(password) if isinstance(password, str) else password
        self.tls_context = tls_context
        self.ssl_context = ssl_context
        self.smtputf8 = smtputf8
        self.data_size_limit = data_size_limit
        self.server_hostname = server_hostname
        self.idle_timeout = idle_timeout
        self.handler = self.handler_class(self)
        self._lock = threading.Condition()
        self._messages: list[Captured] = []
        self._accepted: Counter[str] = Counter()
        self._connections = 0
        self._open = 0
        self._peak_open = 0
        self._seq = 0
        self._live = False
        self._controller: _Controller | None = None

    def __repr__(self) -> str:
        state = "running" if self._controller is not None else "stopped"
        return f"{type(self).__name__}({self.host}:{self.port}, {state})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._controller is not None:
            return self
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        smtp_kwargs: dict[str, Any] = {
            "enable_SMTPUTF8": self.smtputf8,
            "decode_data": False,
            "data_size_limit": self.data_size_limit,
            "timeout": self.idle_timeout,
        }
        if self.username is not None:
            smtp_kwargs["authenticator"] = self._authenticate
            smtp_kwargs["auth_require_tls"] = False
        if self.tls_context is not None:
            smtp_kwargs["tls_context"] = self.tls_context
        controller = _Controller(
            self.handler,
            smtp_class=self.smtp_class,
            hostname=self.host,
            port=self.port,
            ssl_context=self.ssl_context,
            server_hostname=self.server_hostname,
            **smtp_kwargs,
        )
        controller.start()
        self.port = controller.port
        self._controller = controller
        self._live = True  # connections from now on are counted (not aiosmtpd's start probe)
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        self._live = False
        if controller is not None:
            controller.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- how to reach it ---------------------------------------------------------------------

    @property
    def security(self) -> str:
        if self.ssl_context is not None:
            return "ssl"
        return "starttls" if self.tls_context is not None else "none"

    @property
    def url(self) -> str:
        """``smtp://127.0.0.1:PORT?security=none`` (with TLS: ``&verify=false``; no password)."""
        user = f"{self.username}@" if self.username else ""
        verify = "" if self.security == "none" else "&verify=false"
        return f"smtp://{user}{self.host}:{self.port}?security={self.security}{verify}"

    def config(self, **overrides: Any) -> SmtpConfig:
        """An ``SmtpConfig`` for this server (password included); fields can be overridden."""
        fields: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "username": self.username,
            "password": self.password,
            "verify_tls": self.security == "none",
        }
        fields.update(overrides)
        return SmtpConfig(**fields)

    # -- what it received --------------------------------------------------------------------

    @property
    def messages(self) -> list[Captured]:
        with self._lock:
            return list(self._messages)

    @property
    def connections(self) -> int:
        """How many connections were made (aiosmtpd's own start-up probe is not counted)."""
        with self._lock:
            return self._connections

    @property
    def peak_open(self) -> int:
        """The most connections that were open at the same time."""
        with self._lock:
            return self._peak_open

    def accepted_count(self, address: str) -> int:
        """How many messages were accepted for this recipient (case-insensitive)."""
        with self._lock:
            return self._accepted[address.lower()]

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()
            self._accepted.clear()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Captured]:
        """Wait until at least ``count`` messages were captured; return them all."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(f"{len(self._messages)} of {count} messages after {timeout}s")
            return list(self._messages)

    # -- called from the server thread -------------------------------------------------------

    def _count_connection(self, smtp: CaptureSMTP) -> int:
        with self._lock:
            if self._live:
                self._connections += 1
                self._open += 1
                self._peak_open = max(self._peak_open, self._open)
                smtp.counted = True
            return self._connections

    def _connection_closed(self) -> None:
        with self._lock:
            self._open -= 1

    def _authenticate(
        self, smtp: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self.password.get_secret_value() if self.password is not None else ""
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.username is not None
            and auth_data.login == self.username.encode()
            and auth_data.password == expected.encode()
        )
        if ok:
            return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    def _record(self, envelope: Envelope) -> Captured:
        data = envelope.original_content or b""
        rcpts = tuple(envelope.rcpt_tos)
        with self._lock:
            self._seq += 1
            seq = self._seq
        queue_id = f"{seq:08X}"
        path = self._save(seq, rcpts, data) if self.save_dir is not None else None
        captured = Captured(
            mail_from=envelope.mail_from or "",
            rcpt_tos=rcpts,
            data=data,
            mail_options=tuple(envelope.mail_options),
            queue_id=queue_id,
            path=path,
        )
        with self._lock:
            self._messages.append(captured)
            for rcpt in rcpts:
                self._accepted[rcpt.lower()] += 1
            self._lock.notify_all()
        return captured

    def _save(self, seq: int, rcpts: tuple[str, ...], data: bytes) -> Path:
        assert self.save_dir is not None
        stem = f"{seq:06d}-{_UNSAFE.sub('_', rcpts[0] if rcpts else 'message')[:100]}"
        for attempt in range(1000):
            path = self.save_dir / (f"{stem}.eml" if attempt == 0 else f"{stem}-{attempt}.eml")
            try:
                with path.open("xb") as out:  # never overwrite (another server, an earlier run)
                    out.write(data)
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"no free file name for {stem}.eml in {self.save_dir}")


async def drop_connection(smtp: SMTP) -> None:
    """Close the client connection now, without a reply; for handler hooks. Never returns:
    closing the transport makes aiosmtpd cancel the connection's task, which is this one."""
    if smtp.transport is None:
        raise asyncio.CancelledError
    smtp.transport.close()
    await asyncio.Event().wait()
