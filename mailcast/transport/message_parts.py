"""A finished message taken apart for the JSON mail APIs (SendGrid, Mailjet), which take a
message as fields rather than MIME: sender, recipient, subject, reply-to, the text and HTML
bodies, attachments (their base64 as built, not decoded and encoded again), and every other
header as written (RFC 2047 encoded words stay encoded, folding removed)."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses

from mailcast.errors import MessageBuildError

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINES = re.compile(r"\r?\n(?![ \t])")
# headers every JSON API carries in fields of its own (or builds itself)
FIELD_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    base64: str
    content_id: str | None = None  # an inline part (referenced as cid: from the HTML)


@dataclass
class MessageParts:
    from_email: str
    from_name: str
    to_name: str
    subject: str
    reply_to: list[tuple[str, str]] = field(default_factory=list)  # (name, address)
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)  # the others, in order

    def extra_headers(self, reserved: frozenset[str]) -> dict[str, str]:
        """The headers a provider takes as a name → value object (lower-case ``reserved``
        names left out)."""
        return {name: value for name, value in self.headers if name.lower() not in reserved}


def decoded(value: str) -> str:
    """A header value with its RFC 2047 encoded words decoded."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError):
        return value


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    return list(_parsed_addresses(tuple(values)))


@functools.lru_cache(maxsize=64)
def _parsed_addresses(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(display name, address) pairs; cached: a campaign's From and Reply-To never change."""
    return tuple((decoded(n), a) for n, a in getaddresses(list(values)) if a)


def _head(data: bytes) -> tuple[Message, bytes]:
    """A part's headers (as a body-less ``Message``, for its parameter parsing) and its body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    msg = Message()
    for line in _LINES.split(head.decode("utf-8", "replace")):
        name, colon, value = line.partition(":")
        if colon and name.strip():
            msg[name.strip()] = _FOLD.sub("", value).strip()
    return msg, body


def _decode(part: Message, body: bytes) -> bytes:
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    if cte == "base64":
        return binascii.a2b_base64(body)
    return body


def _text(part: Message, body: bytes) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        return _decode(part, body).decode(charset, "replace")
    except LookupError:
        return _decode(part, body).decode("utf-8", "replace")


def _attachment(part: Message, body: bytes) -> Attachment:
    if str(part.get("Content-Transfer-Encoding", "")).strip().lower() == "base64":
        # as built, not decoded and encoded again
        data = body.replace(b"\r\n", b"").replace(b"\n", b"").strip().decode("ascii", "replace")
    else:
        data = base64.b64encode(_decode(part, body)).decode()
    content_id = part.get("Content-ID")
    inline = part.get_content_disposition() == "inline" and content_id is not None
    return Attachment(
        filename=part.get_filename() or "attachment",
        content_type=part.get_content_type(),
        base64=data,
        content_id=str(content_id).strip().strip("<>") if inline and content_id else None,
    )


def _leaves(part: Message, body: bytes) -> Iterator[tuple[Message, bytes]]:
    """The non-multipart parts, depth first (a multipart body split at its boundary)."""
    boundary = part.get_param("boundary") if part.get_content_maintype() == "multipart" else None
    if not isinstance(boundary, str):
        yield part, body
        return
    delimiter = b"--" + boundary.encode()
    sections = (b"\r\n" + body).split(b"\r\n" + delimiter)
    for section in sections[1:]:
        if section.startswith(b"--"):  # the close delimiter: the epilogue follows
            break
        child, child_body = _head(section.partition(b"\n")[2])
        yield from _leaves(child, child_body)


def parse_message(message: bytes, where: str | None = None) -> MessageParts:
    """Take a message mailcast built apart (any MIME shape: text, html, alternative, mixed,
    related)."""
    msg, body = _head(message)
    senders = _addresses(msg.get_all("From", []))
    if not senders:
        raise MessageBuildError("the message has no From address", where=where)
    recipients = _addresses(msg.get_all("To", []))
    parts = MessageParts(
        from_email=senders[0][1],
        from_name=senders[0][0],
        to_name=recipients[0][0] if recipients else "",
        subject=decoded(str(msg.get("Subject", ""))),
        reply_to=_addresses(msg.get_all("Reply-To", [])),
    )
    for name, value in msg.items():
        if name.lower() not in FIELD_HEADERS:
            parts.headers.append((name, str(value)))
    for part, content in _leaves(msg, body):
        kind = part.get_content_type()
        disposition = part.get_content_disposition()
        if disposition is None and kind == "text/plain" and parts.text is None:
            parts.text = _text(part, content)
        elif disposition is None and kind == "text/html" and parts.html is None:
            parts.html = _text(part, content)
        else:
            parts.attachments.append(_attachment(part, content))
    return parts
