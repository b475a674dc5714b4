"""Reading delivery reports: what a message in the bounce mailbox says, and about which delivery.

Handles:

* RFC 3464 delivery status notifications (``multipart/report; report-type=delivery-status``):
  Postfix, Exim, Gmail, Exchange/Office 365 and most MTAs. Per-recipient ``Action``, ``Status``
  (``5.1.1``), ``Diagnostic-Code`` (``smtp; 550 5.1.1 …``), ``Final-Recipient``. ``Action:
  delayed`` is a deferral, not a bounce; ``delivered``/``relayed``/``expanded`` are ignored.
  Their RFC 6533 forms, for messages sent with SMTPUTF8, read the same way:
  ``message/global-delivery-status`` (UTF-8 fields; ``utf-8;`` addresses), the original as
  ``message/global`` or its headers as ``message/global-headers``. Python's parser reads each of
  these as *one* embedded message (the per-recipient blocks end up in its body, a transfer
  encoding is not undone): they are read from their decoded text here.
* RFC 5965 ARF complaint reports (``multipart/report; report-type=feedback-report``): a
  complaint, whatever the ``Feedback-Type``.
* Older plain-text bounces (qmail, old Exchange ``#550 5.1.1 …##``, Sendmail without DSN): read
  from the text, when the message comes from a mailer daemon or looks like a failure notice.
* Unsubscribe requests mailed to the campaign's ``unsubscribe_mailto`` (``Subject: unsubscribe
  TOKEN``, as the ``List-Unsubscribe`` mailto link writes it).

Which delivery: the VERP return path ``bounces+TOKEN@domain`` the report was sent to (the best:
signed), else the original message's ``Message-ID`` (mailcast's ``<run.delivery@domain>``) or its
own VERP/List-Unsubscribe token in the returned headers, else the failed recipient's address (its
latest sent delivery).

Classification: ``hard`` for a permanent failure of the address (5.1.x unknown user or domain,
5.2.1 disabled, 5.4.x no route, 5.5.x, other 5.x.x), ``soft`` for temporary ones (4.x.x) and
permanent codes that are not about the address (5.2.2 mailbox full, 5.2.3/5.3.4 too large,
5.6.x content, 5.7.x policy/spam blocks), ``complaint`` for ARF reports.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import hashlib
import quopri
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from mailcast.engagement import tokens

HARD, SOFT, COMPLAINT, DEFERRAL, UNSUBSCRIBE, IGNORED = (
    "hard", "soft", "complaint", "deferral", "unsubscribe", "ignored",
)  # fmt: skip
# A provider's delivery confirmation (webhooks only: a DSN's "delivered" is ignored).
DELIVERED = "delivered"

_VERP = re.compile(r"bounces\+([a-z2-7]{20,80})@", re.I)
_TRACK_URL = re.compile(r"/u/([a-z2-7]{20,80})\b", re.I)
_MAILCAST_ID = re.compile(
    r"<?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(\d+)@", re.I
)
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?:[ -]|$)")
_UNSUB_SUBJECT = re.compile(r"^\s*unsubscribe\s+([a-z2-7]{20,80})\s*$", re.I)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery (sub)?system|microsoftexchange", re.I)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|delivery status notification|mail delivery failed|returned mail|failure notice"
    r"|delivery failure|could not be delivered|non[- ]?delivery|delivery has failed",
    re.I,
)
# ASCII addresses, and internationalized ones (RFC 6531: UTF-8 letters in both parts)
_ADDRESS = re.compile(r"<?([\w.!#$%&'*+/=?^`{|}~-]+@[\w.-]+\.[^\W\d_]{2,})>?")
_XTEXT_CHAR = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")  # RFC 6533 utf-8-addr-xtext: \x{E9}
# RFC 6533's message types and their ASCII counterparts
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_ORIGINAL_TYPES = ("message/rfc822", "message/global")
_HEADERS_TYPES = ("text/rfc822-headers", "text/rfc822", "message/global-headers")
_SOFT_WORDS = re.compile(
    r"mailbox (is )?full|over ?quota|quota exceeded|insufficient (system )?storage|"
    r"mailbox.{0,20}full|try again later|temporar",
    re.I,
)
_HARD_WORDS = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient)|does not exist|"
    r"recipient (address )?rejected|invalid (recipient|mailbox|address)|"
    r"mailbox unavailable|recipient not found|address not found|not a valid mailbox|"
    r"account (has been )?disabled|unrouteable|host not found|domain not found",
    re.I,
)
# Permanent codes that say nothing bad about the address itself: treated as soft.
_SOFT_PERMANENT = ("5.2.2", "5.2.3", "5.3.4")
_SOFT_PERMANENT_CLASSES = ("5.6.", "5.7.")


@dataclass
class Report:
    """What one message of the bounce mailbox says."""

    message_key: str
    outcome: str  # hard, soft, complaint, deferral, unsubscribe, ignored
    why: str = ""  # for ignored messages: why
    token_delivery: int | None = None  # from a VERP / unsubscribe token (verified)
    mailcast_ids: list[tuple[str, int]] = field(default_factory=list)  # (run, delivery)
    recipients: list[str] = field(default_factory=list)
    status: str | None = None
    code: int | None = None
    diagnostic: str | None = None
    reporter: str | None = None
    feedback_type: str | None = None
    occurred_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more detail (a provider's event)

    def detail(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.outcome in (HARD, SOFT):
            d["type"] = self.outcome
        for key in ("status", "code", "reporter", "feedback_type"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.diagnostic:
            d["diagnostic"] = self.diagnostic[:500]
        if self.recipients:
            d["recipient"] = self.recipients[0]
        for key, value in self.extra.items():  # never in place of the keys above
            d.setdefault(key, value)
        return d


# -- helpers ------------------------------------------------------------------------------------


def message_key(msg: Message, data: bytes) -> str:
    mid = str(msg.get("Message-ID") or "").strip()
    if mid and len(mid) <= 398 and mid.isascii():
        return mid
    return "sha256:" + hashlib.sha256(data).hexdigest()


def find_mailcast_ids(*texts: str) -> list[tuple[str, int]]:
    """(run, delivery) of each mailcast Message-ID (``<run.delivery@domain>``) in ``texts``."""
    found = (_MAILCAST_ID.search(t) for t in texts if t)
    return [(m.group(1).lower(), int(m.group(2))) for m in found if m]


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            return payload.decode("utf-8", "replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _raw_text(part: Message) -> str:
    """The body of a ``message/*`` part as text, as it was sent: Python's parser reads the RFC
    6533 types (``message/global*``) as one embedded message and leaves any transfer encoding
    in place; this serializes that back and decodes it (UTF-8)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        raw = b"".join(p.as_bytes() for p in payload if isinstance(p, Message))
    elif isinstance(payload, str):
        raw = payload.encode("utf-8", "surrogateescape")
    else:
        return ""
    cte = str(part.get("Content-Transfer-Encoding") or "").strip().lower()
    try:
        if cte == "base64":
            raw = base64.b64decode(b"".join(raw.split()))
        elif cte == "quoted-printable":
            raw = quopri.decodestring(raw)
    except (ValueError, binascii.Error):
        pass
    return raw.decode("utf-8", "replace")


def _embedded(part: Message) -> Message | None:
    """The message inside a message/rfc822 or message/global part (or the headers inside a
    message/global-headers part)."""
    payload = part.get_payload()
    cte = str(part.get("Content-Transfer-Encoding") or "").strip().lower()
    if cte in ("base64", "quoted-printable"):  # allowed for message/global (RFC 6532 3.5)
        return email.message_from_string(_raw_text(part))
    if isinstance(payload, list):
        return next((p for p in payload if isinstance(p, Message)), None)
    return None


def _field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status, message/global-delivery-status or
    message/feedback-report part."""
    if part.get_content_type() == "message/global-delivery-status":
        text = _raw_text(part)
        parser = HeaderParser()
        return [
            parser.parsestr(b.strip() + "\n") for b in re.split(r"\r?\n\s*\r?\n", text) if b.strip()
        ]
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = [p for p in payload if isinstance(p, Message)]
        if blocks:
            return blocks
    text = _text(part) if not isinstance(payload, list) else ""
    parser = HeaderParser()
    return [
        parser.parsestr(b.strip() + "\n") for b in re.split(r"\r?\n\s*\r?\n", text) if b.strip()
    ]


def _original_headers(msg: Message) -> list[Message]:
    """The returned original message's headers (message/rfc822 or text/rfc822-headers parts,
    and RFC 6533's message/global and message/global-headers)."""
    found: list[Message] = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in _ORIGINAL_TYPES or ctype == "message/global-headers":
            inner = _embedded(part)
            if inner is not None:
                found.append(inner)
        elif ctype in _HEADERS_TYPES:
            found.append(HeaderParser().parsestr(_text(part)))
    return found


def _strip_type(value: str) -> str:
    """``rfc822; a@b`` → ``a@b``; ``smtp; 550 …`` → ``550 …``; ``utf-8; j\\x{F6}rg@b`` →
    ``jörg@b`` (RFC 6533's xtext form of a UTF-8 address)."""
    value = " ".join(str(value).split())
    kind, sep, rest = value.partition(";")
    if not (sep and " " not in kind.strip()):
        return value
    rest = rest.strip()
    if kind.strip().lower() == "utf-8":
        rest = _XTEXT_CHAR.sub(lambda m: chr(int(m.group(1), 16)), rest)
    return rest


def _addresses(text: str) -> list[str]:
    return [m.group(1) for m in _ADDRESS.finditer(text)]


def classify(status: str | None, code: int | None, text: str = "") -> str:
    """``hard`` or ``soft`` from an enhanced status code (``5.1.1``), an SMTP reply code and the
    diagnostic text."""
    if status:
        if status.startswith(("2.", "4.")):
            return SOFT
        if status in _SOFT_PERMANENT or status.startswith(_SOFT_PERMANENT_CLASSES):
            return SOFT
        return HARD
    if code is not None:
        if 400 <= code < 500:
            return SOFT
        if 500 <= code < 600:
            return SOFT if _SOFT_WORDS.search(text) and not _HARD_WORDS.search(text) else HARD
    if _HARD_WORDS.search(text):
        return HARD
    return SOFT  # not sure: soft (suppressed only after several in a row)


def status_and_code(*texts: str) -> tuple[str | None, int | None]:
    status = code = None
    for text in texts:
        if not text:
            continue
        if status is None:
            m = _STATUS.search(text)
            if m:
                status = ".".join(m.groups())
        if code is None:
            m2 = _SMTP_CODE.search(text)
            if m2:
                code = int(m2.group(1))
    return status, code


def _date(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _tokens_in(
    texts: list[str], secret: bytes | None, kind: str, pattern: re.Pattern[str]
) -> int | None:
    if not secret:
        return None
    for text in texts:
        for m in pattern.finditer(text):
            token = tokens.verify(secret, m.group(1), kind)
            if token is not None:
                return token.delivery_id
    return None


def _header_texts(msg: Message, names: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for name in names:
        out += [str(v) for v in msg.get_all(name) or []]
    return out


_ENVELOPE_HEADERS = (
    "To", "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Delivered-To",
    "Received",
)  # fmt: skip
_ORIGINAL_HEADERS = ("Return-Path", "List-Unsubscribe", "Sender", "From")


# -- parsing ------------------------------------------------------------------------------------


def parse(data: bytes, secret: bytes | None = None) -> Report:
    """What the message ``data`` reports (see the module's docstring). ``secret`` verifies VERP
    and unsubscribe tokens; without it only Message-IDs and addresses identify deliveries."""
    msg = email.message_from_bytes(data)
    key = message_key(msg, data)
    envelope = _header_texts(msg, _ENVELOPE_HEADERS)
    originals = _original_headers(msg)
    original_texts: list[str] = []
    mailcast_ids: list[tuple[str, int]] = []
    for o in originals:
        original_texts += _header_texts(o, _ORIGINAL_HEADERS)
        mailcast_ids += find_mailcast_ids(*(str(m) for m in o.get_all("Message-ID") or []))
    verp = _tokens_in(envelope, secret, tokens.BOUNCE, _VERP)
    if verp is None:  # the returned original's own return path / List-Unsubscribe
        verp = _tokens_in(original_texts, secret, tokens.BOUNCE, _VERP) or _tokens_in(
            original_texts, secret, tokens.UNSUBSCRIBE, _TRACK_URL
        )
    report = Report(
        message_key=key, outcome=IGNORED, token_delivery=verp, mailcast_ids=mailcast_ids
    )
    report.occurred_at = _date(msg.get("Date"))

    ctype = msg.get_content_type()
    report_type = (
        str(msg.get_param("report-type") or "").lower() if ctype == "multipart/report" else ""
    )

    if report_type == "feedback-report":
        return _complaint(msg, report, secret)
    if report_type == "delivery-status":
        return _dsn(msg, report)

    subject = str(msg.get("Subject") or "")
    unsub = _UNSUB_SUBJECT.match(subject)
    if unsub and secret:
        token = tokens.verify(secret, unsub.group(1), tokens.UNSUBSCRIBE)
        if token is not None:
            report.outcome = UNSUBSCRIBE
            report.token_delivery = token.delivery_id
            report.recipients = [a for _n, a in getaddresses([str(msg.get("From") or "")]) if a]
            return report
        report.why = "unsubscribe request with an invalid token"
        return report

    sender = str(msg.get("From") or "") + " " + str(msg.get("Return-Path") or "")
    failed = _header_texts(msg, ("X-Failed-Recipients",))
    if not (_DAEMON.search(sender) or failed or _BOUNCE_SUBJECT.search(subject)):
        report.why = "not a delivery report"
        return report
    return _plain_bounce(msg, report, failed)


def _dsn(msg: Message, report: Report) -> Report:
    blocks: list[Message] = []
    for part in msg.walk():
        if part.get_content_type() in _STATUS_TYPES:
            blocks = _field_blocks(part)
            break
    if not blocks:
        report.why = "a delivery report without a delivery-status part"
        return report
    per_message, recipients = blocks[0], blocks[1:]
    if per_message.get("Final-Recipient") or per_message.get("Action"):
        recipients = blocks  # some MTAs omit the per-message block
    report.reporter = _strip_type(str(per_message.get("Reporting-MTA") or "")) or None
    arrival = _date(per_message.get("Arrival-Date"))
    chosen = None
    for block in recipients:
        action = str(block.get("Action") or "").strip().lower()
        if action in ("failed", "delayed") or (not action and block.get("Status")):
            chosen = block
            if action == "failed" or not action:
                break
    if chosen is None:
        report.why = "a delivery report about a successful delivery"
        return report
    action = str(chosen.get("Action") or "failed").strip().lower()
    diagnostic = _strip_type(str(chosen.get("Diagnostic-Code") or ""))
    status_field = str(chosen.get("Status") or "").strip()
    status = _STATUS.search(status_field)
    diag_status, code = status_and_code(diagnostic)
    report.status = ".".join(status.groups()) if status else diag_status
    report.code = code
    report.diagnostic = diagnostic or None
    for name in ("Final-Recipient", "Original-Recipient", "X-Actual-Recipient"):
        value = chosen.get(name)
        if value:
            report.recipients += _addresses(_strip_type(str(value)))
    if action == "delayed" or ((report.status or "").startswith("4.") and action != "failed"):
        report.outcome = DEFERRAL
    else:
        report.outcome = classify(report.status, report.code, diagnostic)
    if arrival is not None and report.occurred_at is None:
        report.occurred_at = arrival
    return report


def _complaint(msg: Message, report: Report, secret: bytes | None) -> Report:
    report.outcome = COMPLAINT
    for part in msg.walk():
        if part.get_content_type() == "message/feedback-report":
            fields: dict[str, str] = {}
            for block in _field_blocks(part):
                for name, value in block.items():
                    fields.setdefault(name.lower(), str(value))
            report.feedback_type = fields.get("feedback-type", "").strip().lower() or None
            report.reporter = (
                fields.get("user-agent") or fields.get("reported-domain") or ""
            ).strip() or None
            for name in ("original-rcpt-to", "removal-recipient"):
                if fields.get(name):
                    report.recipients += _addresses(fields[name])
            mail_from = fields.get("original-mail-from", "")
            if report.token_delivery is None and mail_from:
                report.token_delivery = _tokens_in([mail_from], secret, tokens.BOUNCE, _VERP)
            arrival = _date(fields.get("arrival-date") or fields.get("received-date"))
            if arrival is not None:
                report.occurred_at = arrival
            break
    if not report.recipients:
        for o in _original_headers(msg):
            report.recipients += [a for _n, a in getaddresses([str(o.get("To") or "")]) if a]
    return report


def _plain_bounce(msg: Message, report: Report, failed: list[str]) -> Report:
    texts = []
    for part in msg.walk():
        if (
            part.get_content_maintype() == "text"
            and part.get_content_type() != "text/rfc822-headers"
        ):
            texts.append(_text(part))
    body = "\n".join(texts)
    # The interesting line: an SMTP reply, an Exchange "#550 5.1.1 …##" or a qmail "<a@b>:" block.
    lines = [x.strip() for x in body.splitlines()]
    diagnostic = next(
        (x for x in lines if _STATUS.search(x) or _SMTP_CODE.match(x.lstrip("#"))), ""
    )
    status, code = status_and_code(diagnostic, body)
    report.status, report.code = status, code
    report.diagnostic = diagnostic[:500] or None
    for value in failed:
        report.recipients += _addresses(value)
    if not report.recipients:
        ours = {
            a.lower() for a in _addresses(str(msg.get("To") or "") + str(msg.get("From") or ""))
        }
        report.recipients = [a for a in _addresses(body) if a.lower() not in ours][:1]
    if not report.mailcast_ids:  # original headers quoted inline in the text
        for m in _MAILCAST_ID.finditer(body):
            report.mailcast_ids.append((m.group(1).lower(), int(m.group(2))))
    report.outcome = classify(status, code, body)
    return report
