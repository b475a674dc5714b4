"""mailcast's exceptions: one small tree, every error says *where* and *what to do*.

::

    MailcastError                 .where (file:row, template:line, host:port, field) and .hint
    ├── SpecError                 the campaign spec is invalid (file, field)
    ├── SourceError               recipient data cannot be read (file:row)
    ├── TemplateError             a template does not compile or uses an unknown variable (template:line)
    ├── AttachmentError           an attachment is missing, too large or outside the campaign folder
    ├── MessageBuildError         one recipient's message cannot be built (address, Message-ID, no body)
    ├── LedgerError               the tracking database
    │   ├── SchemaOutdatedError   the database schema is behind the code: run `mailcast db upgrade`
    │   ├── LedgerUnavailable     the database cannot be reached (the engine waits for it)
    │   └── RunNotFoundError      no run with that id
    ├── TransportError            talking to the mail server (host:port)
    │   ├── ConnectError          cannot reach the server; .code: the refused greeting's reply code
    │   ├── AuthError             the server refused the credentials, or requires authentication
    │   │                         (530/534/535/538, 5.7.8 ... at any stage): stops the run at once
    │   ├── TlsError              TLS could not be established: stops the run at once
    │   └── DeliveryRefused       one message refused, transport-neutral: .kind (temporary,
    │       │                     throttled: the whole run slows down, permanent), .code (the
    │       │                     SMTP reply code or the provider's), .text, .from_server
    │       ├── SmtpReplyError    an SMTP refusal; .stage (MAIL/RCPT/DATA), kind from the code
    │       └── ConnectionLost    the connection dropped (or timed out) mid-message (temporary);
    │                             .maybe_delivered when only the reply to the whole message (the
    │                             final dot, an API request sent whole) is missing: unknown
    ├── TrackingError             no usable tracking secret (MAILCAST_TRACKING_SECRET or its block)
    │                             or webhook secret (a provider's key, MAILCAST_*_WEBHOOK_*)
    │   └── WebhookRefused        a provider webhook post refused (forged, replayed, unsigned):
    │                             answered with .status by `mailcast serve`, never shown
    ├── DkimError                 the campaign's DKIM key cannot be read or cannot sign
    ├── SegmentError              a segment expression does not parse (.column), names a list
    │                             that does not exist, or no segment has that name
    ├── RepeatError               the campaign was already sent to this audience (a completed
    │                             real run): confirm (--again) or set `allow_repeats: true`
    ├── MailboxError              the bounce mailbox is not configured or cannot be read
    ├── AudienceError             contacts and lists: an invalid address, a bad option (address,
    │   │                         list name, option)
    │   ├── AudienceNotFoundError no contact or no list by that address or name
    │   └── AudienceConflictError it exists already, or the person may not be added (blocklisted,
    │                             erased, unsubscribed)
    └── RunStopped                a run paused itself (too many consecutive failures); resume it

Per-message outcomes (DeliveryRefused) never reach the user as tracebacks: the send step records
them in the ledger. Everything else is turned by the CLI into one line: ``error: <where>: <msg>``
followed by ``hint: <hint>``.
"""

from __future__ import annotations

from enum import StrEnum


class MailcastError(Exception):
    """Base of every error mailcast raises on purpose."""

    default_hint: str = ""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def one_line(self) -> str:
        """The CLI form: ``<where>: <message> (hint: ...)``."""
        text = str(self)
        return f"{text}\nhint: {self.hint}" if self.hint else text


class SpecError(MailcastError):
    default_hint = "fix the campaign spec (see `mailcast init` for a commented example)"


class SourceError(MailcastError):
    default_hint = (
        "check the recipient file: UTF-8 (or declared encoding), a header row, an email column"
    )


class TemplateError(MailcastError):
    default_hint = "fix the template; variables must be columns of the recipient data"


class AttachmentError(MailcastError):
    default_hint = "attachments must be readable files inside the campaign folder"


class MessageBuildError(MailcastError):
    """One recipient's message cannot be built (an address unusable in a header, a bad
    Message-ID, no body): final for that recipient, the run goes on."""

    default_hint = "check the recipient's address and the campaign's templates"


class LedgerError(MailcastError):
    default_hint = "check --db / MAILCAST_DATABASE_URL"


class SchemaOutdatedError(LedgerError):
    default_hint = "run `mailcast db upgrade` (with the same --db) and try again"


class LedgerUnavailable(LedgerError):
    """The ledger database cannot be reached (down, restarting, connection lost)."""


class RunNotFoundError(LedgerError):
    default_hint = "`mailcast runs` lists the runs in this ledger"


class AudienceError(MailcastError):
    """Contacts and lists (``mailcast contacts``, ``mailcast lists``, the library API in
    ``mailcast.recipients.contacts``): an invalid address, an unknown option."""

    default_hint = "`mailcast contacts --help` and `mailcast lists --help` show the options"


class AudienceNotFoundError(AudienceError):
    default_hint = "`mailcast contacts search` and `mailcast lists show` list what exists"


class AudienceConflictError(AudienceError):
    """The contact or list exists already, or the person may not be (re)added that way."""

    default_hint = "`mailcast contacts show ADDRESS` shows the contact and its lists"


class TransportError(MailcastError):
    default_hint = "check the SMTP settings (--smtp URL or --smtp-block NAME)"


class ConnectError(TransportError):
    """``code``: the server's reply code when it answered the connection with a refusal (a
    "421 busy" or "554 no service" greeting, a refused EHLO); None when it could not be reached."""

    default_hint = "is the SMTP server running and reachable at that host:port?"

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.code = code

    @property
    def busy(self) -> bool:
        """A 4xx greeting: the server is there but asks to come back later (a slow-down)."""
        return self.code is not None and 400 <= self.code < 500


class AuthError(TransportError):
    default_hint = "check the username and MAILCAST_SMTP_PASSWORD (or the SMTP block's password)"


class TlsError(TransportError):
    default_hint = (
        "check `security` (ssl for port 465, starttls for 587) and the server's certificate"
    )


class RefusalKind(StrEnum):
    """How final a refusal of one message is, whatever the transport."""

    TEMPORARY = "temporary"  # try again later
    THROTTLED = "throttled"  # try again later, and the whole run slows down
    PERMANENT = "permanent"  # final for this recipient


# SMTP replies that mean "slow down" rather than "not this message" (RFC 5321, RFC 3463).
SMTP_THROTTLE_CODES = frozenset({421, 451, 454})


class DeliveryRefused(TransportError):
    """One message was refused by the server or the provider: the transport-neutral outcome.

    ``kind`` says how final it is (``RefusalKind``); ``code`` is the SMTP reply code or the
    provider's code (an HTTP status for API providers); ``text`` the reply or the provider's
    message; ``stage`` the SMTP command refused (MAIL, RCPT, DATA; empty for API providers).
    ``from_server`` is False when mailcast itself refused to send the message there (e.g. an
    internationalized address to a server without SMTPUTF8): never a bounce."""

    def __init__(
        self,
        code: int,
        text: str,
        *,
        kind: RefusalKind | str = RefusalKind.PERMANENT,
        where: str | None = None,
        stage: str = "",
        from_server: bool = True,
    ) -> None:
        self.code = code
        self.text = text
        self.kind = RefusalKind(kind)
        self.stage = stage
        self.from_server = from_server
        super().__init__(f"{code} {text}".strip() if code else text, where=where)

    @property
    def permanent(self) -> bool:
        return self.kind is RefusalKind.PERMANENT

    @property
    def throttled(self) -> bool:
        return self.kind is RefusalKind.THROTTLED


def smtp_refusal_kind(code: int) -> RefusalKind:
    """An SMTP reply code's kind: 5xx permanent, 421/451/454 throttled, other 4xx temporary."""
    if 500 <= code < 600:
        return RefusalKind.PERMANENT
    if code in SMTP_THROTTLE_CODES:
        return RefusalKind.THROTTLED
    return RefusalKind.TEMPORARY


class SmtpReplyError(DeliveryRefused):
    """One message was refused by an SMTP server. 4xx is temporary (421/451/454: throttled),
    5xx permanent. ``stage``: the command refused (MAIL, RCPT, DATA)."""

    def __init__(
        self,
        code: int,
        text: str,
        *,
        where: str | None = None,
        stage: str = "",
        from_server: bool = True,
    ) -> None:
        super().__init__(
            code,
            text,
            kind=smtp_refusal_kind(code),
            where=where,
            stage=stage,
            from_server=from_server,
        )


class ConnectionLost(DeliveryRefused):
    """The connection dropped (or timed out) during ``stage``, before the server's reply.
    ``maybe_delivered``: the whole message was sent (the final dot, or an API request sent
    whole) and only the reply to it is missing: the server may have accepted it (the engine
    records the row ``unknown``). Any transport raises it; the next ``send`` reconnects."""

    def __init__(
        self,
        text: str = "connection lost",
        *,
        where: str | None = None,
        stage: str = "",
        maybe_delivered: bool = False,
    ) -> None:
        super().__init__(0, text, kind=RefusalKind.TEMPORARY, where=where, stage=stage)
        self.maybe_delivered = maybe_delivered


class TrackingError(MailcastError):
    default_hint = (
        "set MAILCAST_TRACKING_SECRET (at least 16 characters, e.g. `python -c 'import secrets;"
        " print(secrets.token_urlsafe(32))'`) or MAILCAST_TRACKING_SECRET_BLOCK (a Prefect Secret"
        " block), the same for the sending worker and `mailcast serve`"
    )


class WebhookRefused(TrackingError):
    """A post to a provider webhook endpoint that is not the provider's (or not anymore): answered
    with ``status`` (401, 403, 404, 413...) and recorded nowhere; ``why`` goes to the log."""

    def __init__(self, status: int, why: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(why, where="webhook", hint="")
        self.status = status
        self.why = why
        self.headers = headers or {}


class DkimError(MailcastError):
    default_hint = (
        "the campaign's `dkim` needs an unencrypted PEM private key (RSA, 2048-bit, or Ed25519)"
        " in the Prefect Secret block `key_block` or the file `key_file` (README: DKIM)"
    )


class MailboxError(MailcastError):
    default_hint = (
        "set the bounce mailbox: a Maildir path (MAILCAST_BOUNCE_MAILDIR or `maildir`) or"
        " imaps://user@host/FOLDER (MAILCAST_BOUNCE_IMAP_URL or `imap_url`) with"
        " MAILCAST_BOUNCE_IMAP_PASSWORD"
    )


class SegmentError(MailcastError):
    """A segment expression that does not parse (``column``: 1-based, where it went wrong),
    that names a list that does not exist, or a segment name that is unknown or taken."""

    default_hint = "README: Segments (the expression language, with examples)"

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.column = column


class RepeatError(MailcastError):
    """A campaign already sent (a completed real run) to the same recipients source."""

    default_hint = (
        "`mailcast send --again` sends it again; a deployment needs `allow_repeats: true` in"
        " the campaign spec (or a `key` with `once_per_contact: true`)"
    )


class RunStopped(MailcastError):
    default_hint = "fix the cause, then `mailcast resume RUN_ID`"
