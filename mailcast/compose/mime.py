"""Building the RFC 5322 bytes of a message, fast.

``email.message.EmailMessage`` + ``as_bytes()`` costs ~3.5 ms a message; this module builds the
message *structure* once per campaign (random MIME boundaries, the headers that never vary,
attachments read, checked and base64-encoded once) and per recipient encodes only what is
personal -- To, Subject, Date, Message-ID, templated headers and the two bodies -- splicing
pre-built byte segments together.

Header safety: every header value goes through :func:`encode_header`, which first turns every
character that could end a line (CR, LF, NUL, VT, FF, \\x1c-\\x1e, \\x85, U+2028, U+2029, tab)
into a space, then writes printable ASCII as is (folded at spaces) and anything else as RFC 2047
encoded-words. Recipient data therefore can never start a header line of its own. Addresses are
checked (:func:`check_address`) and refused with ``MessageBuildError`` when they contain anything
an addr-spec may not.

Shapes: text only → ``text/plain``; html only → ``text/html``; both → ``multipart/alternative``
(text, then html); with attachments → ``multipart/mixed`` holding the body (or the alternative)
and then each attachment. Line endings are CRLF throughout and every message ends with CRLF.
"""

from __future__ import annotations

import mimetypes
import re
import secrets
import time
from binascii import b2a_base64, b2a_qp
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from urllib.parse import quote

from mailcast.compose.templates import Rendered, is_template
from mailcast.errors import AttachmentError, MessageBuildError, SpecError
from mailcast.spec import CampaignSpec

CRLF = b"\r\n"

# Every str.splitlines() separator, NUL and tab: they become a space in a header value.
_SEPARATORS = re.compile("[\x00\t\n\x0b\x0c\r\x1c\x1d\x1e\x85\u2028\u2029]")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # a display name holding one must be quoted
_LOCAL_BAD = re.compile(r'[\x00-\x20\x7f()<>\[\]:;@\\,"\x85\u00a0\u2028\u2029]')
_DOMAIN_BAD = re.compile(r'[\x00-\x20\x7f()<>\[\]:;@\\,"\x85\u00a0\u2028\u2029]')
_LITERAL_BAD = re.compile(r"[\x00-\x20\x7f\[\]\\\x85\u00a0\u2028\u2029]")
_ID_BAD = re.compile(r"[^\x21-\x7e]|[<>]")
_WORDS = re.compile(r" *[^ ]+")
_HIGH_BYTES = bytes(range(128, 256))
_7BIT_BYTES = b"\t\r\n" + bytes(range(0x20, 0x7F))  # what a 7bit body may hold
BOUNDARY_PREFIX = "==mc"  # every boundary starts with it: QP escapes "=", base64 has no "=="

MAX_LINE = 78  # folding target (RFC 5322 "SHOULD")
HARD_LINE = 998  # RFC 5322 "MUST"
_EW_BYTES = 45  # 45 bytes → 60 base64 chars → "=?utf-8?b?" + 60 + "?=" = 72 ≤ 75


# -- headers ----------------------------------------------------------------------------------


def clean_header_value(value: str) -> str:
    """Replace every line separator (and NUL, tab) with a space; strip surrounding spaces."""
    if _SEPARATORS.search(value):
        value = _SEPARATORS.sub(" ", value)
    return value.strip(" ")


def _utf8(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return value.encode("utf-8", "replace")


def encoded_words(value: str) -> list[str]:
    """RFC 2047 ``=?utf-8?b?...?=`` words, each ≤ 75 chars and holding whole characters.

    A split is made just after a space when there is one in the chunk: RFC 2047 decoders ignore
    the folding whitespace between two encoded-words, while Python's parser (3.11) keeps it in
    display names; splitting after a space makes that at worst a doubled space, never a space
    inside a word.
    """
    data = _utf8(value)
    n = len(data)
    words: list[str] = []
    i = 0
    while i < n:
        j = i + _EW_BYTES
        if j >= n:
            j = n
        else:
            while data[j] & 0xC0 == 0x80:  # never split a UTF-8 sequence
                j -= 1
            space = data.rfind(b" ", i + 1, j)
            if space > i:
                j = space + 1
        words.append("=?utf-8?b?" + b2a_base64(data[i:j], newline=False).decode("ascii") + "?=")
        i = j
    return words


def _fold_plain(name: str, value: str) -> str | None:
    """``Name: value`` folded at spaces to ≤ 78 chars where possible; None when a line would
    still exceed 998 (the caller then uses encoded-words)."""
    line = f"{name}: {value}"
    if len(line) <= MAX_LINE:
        return line
    head = f"{name}:"
    lines: list[str] = []
    current = head
    for token in _WORDS.findall(" " + value):  # each token: its leading spaces, then a word
        if current != head and len(current) + len(token) > MAX_LINE:
            lines.append(current)
            current = token  # starts with a space: a continuation line
        else:
            current += token
    lines.append(current)
    if any(len(x) > HARD_LINE for x in lines):
        return None
    return "\r\n".join(lines)


def encode_header(name: str, value: str) -> bytes:
    """The complete header line(s) ``Name: value\\r\\n`` for an unstructured value.

    This is the one way a header value reaches a message. Printable ASCII is written as is
    (folded at spaces); anything else, or text that looks like an encoded-word, is written as
    RFC 2047 encoded-words separated by CRLF + space.
    """
    value = clean_header_value(value)
    if _PRINTABLE.fullmatch(value) and "=?" not in value:
        folded = _fold_plain(name, value)
        if folded is not None:
            return folded.encode("ascii") + CRLF
    return _fold_tokens(name, encoded_words(value))


def check_address(address: str) -> str:
    """Return ``address`` if it is a plain addr-spec (``local@domain``, the domain possibly a
    ``[literal]``); otherwise raise ``MessageBuildError``. CR, LF, NUL, whitespace, ``<>``, commas and
    other specials are refused, so an address cannot add a header or another recipient."""
    local, at, domain = address.rpartition("@")
    ok = bool(at and local and domain) and not _LOCAL_BAD.search(local)
    if ok:
        if domain.startswith("[") and domain.endswith("]"):
            ok = len(domain) > 2 and not _LITERAL_BAD.search(domain[1:-1])
        else:
            ok = not _DOMAIN_BAD.search(domain)
    if not ok:
        raise MessageBuildError(f"not a plain email address: {address!r}", where="to")
    return address


def _phrase(name: str) -> list[str]:
    """A display name as the tokens of a phrase: one (quoted if need be) string for printable
    ASCII, else encoded-words."""
    if _PRINTABLE.fullmatch(name) and "=?" not in name:
        if _SPECIALS.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(name) <= MAX_LINE - 6:
            return [name]
    return encoded_words(name)


def address_tokens(name: str | None, address: str) -> list[str]:
    """The tokens of ``name <address>`` (the phrase's words, then ``<address>``), or just the
    bare address when there is no name. The address is checked with :func:`check_address`."""
    check_address(address)
    name = clean_header_value(name) if name else ""
    if not name:
        return [address]
    return [*_phrase(name), f"<{address}>"]


def format_address(name: str | None, address: str) -> str:
    """``name <address>`` as it would appear in an address header (unfolded)."""
    return " ".join(address_tokens(name, address))


def _fold_tokens(name: str, tokens: list[str]) -> bytes:
    """``Name: t1 t2 ...`` with a line break (CRLF + space) before a token that would take the
    line past 78 chars. Tokens never contain spaces that matter to folding."""
    head = f"{name}:"
    lines: list[str] = []
    current = head
    for token in tokens:
        if current != head and len(current) + 1 + len(token) > MAX_LINE:
            lines.append(current)
            current = " " + token
        else:
            current += " " + token
    lines.append(current)
    return "\r\n".join(lines).encode("utf-8") + CRLF  # UTF-8 only in SMTPUTF8 addresses


def _parse_addresses(value: str, field: str, *, single: bool) -> list[tuple[str, str]]:
    pairs = [(n, a) for n, a in getaddresses([value]) if n or a]
    if not pairs or (single and len(pairs) != 1):
        expected = "one address" if single else "one or more addresses"
        raise SpecError(
            f"{value!r} is not {expected}, e.g. 'Acme <news@acme.example>'", where=field
        )
    for _name, address in pairs:
        try:
            check_address(address)
        except MessageBuildError:
            raise SpecError(
                f"{value!r}: {address!r} is not an email address", where=field
            ) from None
    return pairs


# -- bodies -----------------------------------------------------------------------------------

# Transfer encoding, per body:
# * 7bit when the text is ASCII without control characters (other than tab and newline), with
#   every line ≤ 998 bytes and no MIME boundary inside: the body is copied as is (the fastest,
#   and what most templates are).
# * otherwise quoted-printable (binascii.b2a_qp, C speed) when under ~1/6 of the UTF-8 bytes are
#   non-ASCII: size ≈ n + 2·high, smaller than base64's 4/3·n for Latin-script text, and the raw
#   message stays readable; QP escapes "=", so a QP body can never contain a boundary (which
#   begins with "==").
# * base64 (binascii.b2a_base64) otherwise -- CJK, Cyrillic, Greek... where QP would be up to
#   3× the size. base64 has neither "=" inside nor "-", so it cannot hold a boundary line either.
_CTE_7BIT = b"7bit"
_CTE_QP = b"quoted-printable"
_CTE_B64 = b"base64"


def _base64_lines(data: bytes) -> bytes:
    """base64 at 76-char lines, CRLF after each (including the last)."""
    encoded = b2a_base64(data, newline=False)
    if len(encoded) <= 76:
        return encoded + CRLF if encoded else b""
    return CRLF.join([encoded[i : i + 76] for i in range(0, len(encoded), 76)]) + CRLF


def _lines_fit(text: str) -> bool:
    """True when no line of ``text`` (LF line breaks) is longer than 998 chars: every window of
    999 chars must hold a newline; jumping to the last one makes this a few ``rfind`` calls."""
    start, n = 0, len(text)
    while n - start > HARD_LINE:
        newline = text.rfind("\n", start, start + HARD_LINE + 1)
        if newline < 0:
            return False
        start = newline + 1
    return True


def encode_body(text: str, *, in_multipart: bool, ends_message: bool) -> tuple[bytes, bytes]:
    """(Content-Transfer-Encoding, encoded body with CRLF line endings) for a UTF-8 text part.

    Line breaks (LF, CRLF or CR) become CRLF, so the decoded text is ``text`` with CRLF line
    breaks. ``in_multipart``: the body must not contain a boundary; a 7bit body holding
    ``BOUNDARY_PREFIX`` is sent as quoted-printable instead (which escapes "="). ``ends_message``:
    the message must end with CRLF; a 7bit body that does not end with a newline is then sent
    as quoted-printable ending with a soft line break, so the decoded text stays exact.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    ends_with_newline = text.endswith("\n")
    if text.isascii():
        data = text.replace("\n", "\r\n").encode("ascii")
        if (
            not data.translate(None, _7BIT_BYTES)  # no control characters
            and (len(text) <= HARD_LINE or _lines_fit(text))
            and (ends_with_newline or not ends_message)
            and not (in_multipart and BOUNDARY_PREFIX in text)
        ):
            return _CTE_7BIT, data
    else:
        data = _utf8(text.replace("\n", "\r\n"))
        high = len(data) - len(data.translate(None, _HIGH_BYTES))
        if high * 6 > len(data):
            return _CTE_B64, _base64_lines(data)
    # b2a_qp takes the line ending from the first line break (CRLF here) and keeps it; a text
    # without any line break gets "=\n" soft breaks, hence the replace.
    encoded = b2a_qp(data, istext=True)
    if b"\r\n" not in data:
        encoded = encoded.replace(b"\n", CRLF)
    if not ends_with_newline:
        # A soft line break: the message ends with CRLF and a trailing space is kept (decoders
        # strip trailing whitespace from QP lines, but not before "=").
        encoded += b"=\r\n"
    return _CTE_QP, encoded


def _part_head(subtype: str, cte: bytes) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: '.encode()
        + cte
        + b"\r\n\r\n"
    )


# -- attachments ------------------------------------------------------------------------------


def _filename_params(filename: str) -> tuple[str, str]:
    """(Content-Type ``name`` param, Content-Disposition ``filename`` param)."""
    if _PRINTABLE.fullmatch(filename):
        quoted = '"' + filename.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"name={quoted}", f"filename={quoted}"
    encoded = "utf-8''" + quote(filename, safe="!#$&+^`|")  # RFC 2231
    return f"name*={encoded}", f"filename*={encoded}"


def _load_attachment(spec: CampaignSpec, relative: str) -> tuple[bytes, int]:
    """The encoded MIME part (headers + base64 body) and the file's size. The file must be
    inside the campaign folder, itself inside a campaign root (``spec.campaign_file``)."""
    path = spec.resolve(relative)
    real = spec.campaign_file(relative, field="attachments", error=AttachmentError)
    if not real.exists():
        raise AttachmentError(f"no such file ({path})", where=relative)
    if real.is_dir():
        raise AttachmentError("is a directory, not a file", where=relative)
    if not real.is_file():
        raise AttachmentError("is not a regular file", where=relative)
    try:
        data = real.read_bytes()
    except OSError as exc:
        raise AttachmentError(f"cannot read: {exc.strerror or exc}", where=relative) from None

    filename = clean_header_value(path.name) or "attachment"
    mime, encoding = mimetypes.guess_type(path.name)
    if mime is None or encoding is not None:
        mime = "application/octet-stream"
    type_param, disposition_param = _filename_params(filename)
    head = (
        f"Content-Type: {mime};\r\n {type_param}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment;\r\n {disposition_param}\r\n\r\n"
    ).encode("ascii")
    return head + _base64_lines(data), len(data)


# -- the builder ------------------------------------------------------------------------------


class MessageBuilder:
    """Builds a campaign's messages. Construct once per campaign (per process); ``build`` is
    then cheap and thread-safe.

    Raises ``SpecError`` (``where="sender"``/``"reply_to"``) for an unusable address and
    ``AttachmentError`` (``where=`` the attachment as written in the spec) for an attachment
    that is missing, a directory, outside the campaign folder, or too large.
    """

    def __init__(self, spec: CampaignSpec, *, message_id_domain: str | None = None) -> None:
        self.spec = spec
        self.max_message_bytes = spec.max_message_bytes

        ((sender_name, sender_address),) = _parse_addresses(spec.sender, "sender", single=True)
        self.envelope_sender: str = sender_address
        self.message_id_domain = message_id_domain or sender_address.rpartition("@")[2]
        if _ID_BAD.search(self.message_id_domain) or "@" in self.message_id_domain:
            raise SpecError(
                f"{self.message_id_domain!r} is not a domain", where="message_id_domain"
            )

        # Random, long, and starting with "==" (which QP escapes and base64 never contains).
        self.boundary_mixed = BOUNDARY_PREFIX + secrets.token_hex(16)
        self.boundary_alt = BOUNDARY_PREFIX + secrets.token_hex(16)

        self._head_from = _fold_tokens("From", address_tokens(sender_name, sender_address))
        static = []
        if spec.reply_to:
            pairs = _parse_addresses(spec.reply_to, "reply_to", single=False)
            tokens: list[str] = []
            for n, a in pairs:
                if tokens:
                    tokens[-1] += ","
                tokens += address_tokens(n, a)
            static.append(_fold_tokens("Reply-To", tokens))
        static.append(b"MIME-Version: 1.0\r\n")
        self.templated_headers: list[str] = []
        for header, value in spec.headers.items():
            if is_template(value):
                self.templated_headers.append(header)
            elif clean_header_value(value):
                static.append(encode_header(header, value))
        self._head_static = b"".join(static)

        # Attachments: read, checked and encoded once.
        parts: list[bytes] = []
        total = 0
        for relative in spec.attachments:
            part, _size = _load_attachment(spec, relative)
            total += len(part)
            if total > self.max_message_bytes:
                raise AttachmentError(
                    f"the attachments come to {total} bytes encoded, over max_message_bytes"
                    f" ({self.max_message_bytes})",
                    where=relative,
                    hint="send smaller files (or a link), or raise `max_message_bytes`",
                )
            parts.append(part)
        self.attachment_bytes = total
        delimiter = f"\r\n--{self.boundary_mixed}\r\n".encode("ascii")
        self._mixed_head = (
            f'Content-Type: multipart/mixed;\r\n boundary="{self.boundary_mixed}"\r\n\r\n'
            f"--{self.boundary_mixed}\r\n"
        ).encode("ascii")
        self._mixed_tail = (
            b"".join(delimiter + p for p in parts) + f"\r\n--{self.boundary_mixed}--\r\n".encode()
            if parts
            else b""
        )
        self._alt_head = (
            f'Content-Type: multipart/alternative;\r\n boundary="{self.boundary_alt}"\r\n\r\n'
            f"--{self.boundary_alt}\r\n"
        ).encode("ascii")
        self._alt_middle = f"\r\n--{self.boundary_alt}\r\n".encode("ascii")
        self._alt_close = f"\r\n--{self.boundary_alt}--".encode("ascii")
        self._alt_close_end = self._alt_close + CRLF
        self._part_heads = {
            (subtype, cte): _part_head(subtype, cte)
            for subtype in ("plain", "html")
            for cte in (_CTE_7BIT, _CTE_QP, _CTE_B64)
        }
        self._date_cache: tuple[int, bytes] = (-1, b"")

    # -- per message ---------------------------------------------------------------------------

    def format_message_id(self, message_id: str) -> str:
        """``<id@domain>`` from ``id@domain``, ``<id@domain>`` or ``id`` (which gets
        ``@message_id_domain``). ``MessageBuildError`` for whitespace, controls or brackets inside."""
        core = message_id.strip()
        if core.startswith("<") and core.endswith(">"):
            core = core[1:-1]
        if core and "@" not in core:
            core = f"{core}@{self.message_id_domain}"
        if not core or _ID_BAD.search(core) or core.count("@") != 1:
            raise MessageBuildError(f"not a usable Message-ID: {message_id!r}", where="Message-ID")
        return f"<{core}>"

    def _date_header(self) -> bytes:
        now = int(time.time())
        cached = self._date_cache
        if cached[0] == now:
            return cached[1]
        line = f"Date: {format_datetime(datetime.fromtimestamp(now, UTC))}\r\n".encode("ascii")
        self._date_cache = (now, line)
        return line

    def _body_parts(self, out: list[bytes], rendered: Rendered, *, ends_message: bool) -> None:
        text, html = rendered.text, rendered.html
        heads = self._part_heads
        if text is not None and html is not None:
            cte, body = encode_body(text, in_multipart=True, ends_message=False)
            cte2, body2 = encode_body(html, in_multipart=True, ends_message=False)
            out += (
                self._alt_head,
                heads["plain", cte],
                body,
                self._alt_middle,
                heads["html", cte2],
                body2,
                self._alt_close_end if ends_message else self._alt_close,
            )
            return
        if text is not None:
            subtype, content = "plain", text
        elif html is not None:
            subtype, content = "html", html
        else:
            raise MessageBuildError(
                "the message has neither a text nor an html body",
                hint="give the campaign a `text` or an `html` template",
            )
        cte, body = encode_body(content, in_multipart=not ends_message, ends_message=ends_message)
        out += (heads[subtype, cte], body)

    def build(
        self,
        rendered: Rendered,
        to_address: str,
        message_id: str,
        date: str | None = None,
        *,
        row: int | None = None,
        extra_head: bytes = b"",
    ) -> bytes:
        """The message's bytes (CRLF line endings, ending with CRLF).

        ``extra_head``: header lines already encoded (CRLF-terminated), e.g. tracking's
        List-Unsubscribe; they go with the other headers and count towards the size limit.

        ``message_id`` may be given with or without angle brackets (see
        :meth:`format_message_id`); the header is always ``<...>``. ``date`` is an RFC 5322 date
        (default: now, UTC). Custom headers are those of the spec, in its order; a templated
        one that renders empty is left out. ``MessageBuildError`` for an unusable address or
        Message-ID; ``AttachmentError`` when the message is over ``max_message_bytes``
        (``row`` only makes that message name the row).
        """
        out = [
            self._head_from,
            _fold_tokens("To", address_tokens(rendered.to_name, to_address)),
            encode_header("Subject", rendered.subject),
            self._date_header() if date is None else encode_header("Date", date),
            f"Message-ID: {self.format_message_id(message_id)}\r\n".encode("ascii"),
            self._head_static,
            extra_head,
        ]
        if self.templated_headers:
            headers = rendered.headers
            for header in self.templated_headers:
                value = headers.get(header)
                if value and clean_header_value(value):
                    out.append(encode_header(header, value))
        if self._mixed_tail:
            out.append(self._mixed_head)
            self._body_parts(out, rendered, ends_message=False)
            out.append(self._mixed_tail)
        else:
            self._body_parts(out, rendered, ends_message=True)
        message = b"".join(out)
        if len(message) > self.max_message_bytes:
            who = f"row {row}" if row is not None else to_address
            raise AttachmentError(
                f"the message for {who} is {len(message)} bytes, over the limit of"
                f" {self.max_message_bytes}",
                where=f"row {row}" if row is not None else None,
                hint="shorten the template or the attachments, or raise `max_message_bytes`",
            )
        return message


__all__ = [
    "MessageBuilder",
    "address_tokens",
    "check_address",
    "clean_header_value",
    "encode_body",
    "encode_header",
    "encoded_words",
    "format_address",
]
