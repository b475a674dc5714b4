"""The transport interface the send engine depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Reply:
    """The server's acknowledgement of one message (250 and its text), or the outbox file."""

    code: int
    text: str
    # The id an API provider gave the message (None for SMTP and the outbox).
    provider_message_id: str | None = None


class Transport(Protocol):
    """Sends finished messages. One instance is one connection; it is not shared by threads.

    ``send`` returns the acknowledgement or raises ``mailcast.errors.SmtpReplyError`` (4xx/5xx for
    this message; ``ConnectionLost`` when the connection dropped before the message was
    acknowledged), ``AuthError``/``TlsError`` (fatal for the run) or ``ConnectError``.
    After ``ConnectionLost`` the caller may call ``send`` again: the transport reconnects.
    """

    where: str  # host:port or the outbox folder, for messages

    def open(self) -> None: ...

    def send(self, sender: str, recipient: str, message: bytes) -> Reply: ...

    def close(self) -> None: ...
