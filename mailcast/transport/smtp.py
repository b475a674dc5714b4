"""The SMTP transport: one connection, reused for every message, with exact replies.

``SmtpTransport.send`` talks to the server step by step (MAIL, RCPT, DATA) instead of calling
``smtplib.SMTP.sendmail``, so that a refusal is reported with its code, its text and the stage
that refused it, and so that the connection stays usable afterwards (RSET after a refused
MAIL/RCPT/DATA command, reconnect after a drop or a 421).

The password never appears in a repr, a str or an error message: it is a ``SecretStr`` and is
only unwrapped in the one call to ``smtplib.SMTP.login``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib
import socket
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, get_args
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    SmtpReplyError,
    SpecError,
    TlsError,
)
from mailcast.redact import redact_url
from mailcast.transport.base import Reply
from mailcast.transport.oauth2 import TokenProvider, xoauth2

if TYPE_CHECKING:
    from mailcast.settings import Settings

__all__ = ["DEFAULT_PORTS", "Security", "SmtpConfig", "SmtpTransport"]

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "ssl"]
SECURITIES: tuple[str, ...] = get_args(Security)
DEFAULT_PORTS: dict[str, int] = {"none": 25, "starttls": 587, "ssl": 465}

_URL_OPTIONS = ("security", "timeout", "verify", "local_hostname")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_URL_HINT = (
    "use smtp://USER@HOST:PORT?security=starttls (or none, or ssl) or smtps://USER@HOST:465, "
    "options timeout=SECONDS and verify=false; put the password in MAILCAST_SMTP_PASSWORD, "
    "not in the URL"
)
_SECURITY_HINT = "check `security`: ssl for port 465, starttls for 587, none only for local relays"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_DOT_LINE = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


@dataclass(frozen=True, repr=False)
class SmtpConfig:
    """Where and how to reach the SMTP server. Build it with ``from_url`` or from the block."""

    host: str
    port: int
    security: Security = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    timeout: float = 30.0
    verify_tls: bool = True
    local_hostname: str | None = None
    # OAuth2 instead of the password: AUTH XOAUTH2 with this provider's access tokens
    oauth2: TokenProvider | None = None

    def __post_init__(self) -> None:
        if self.security not in SECURITIES:
            raise ValueError(f"security must be one of {', '.join(SECURITIES)}: {self.security!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535: {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0: {self.timeout}")
        if isinstance(self.password, str):  # tolerate a plain str, keep it wrapped
            object.__setattr__(self, "password", SecretStr(self.password))

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __repr__(self) -> str:
        password = "'**********'" if self.password is not None else "None"
        return (
            f"SmtpConfig(host={self.host!r}, port={self.port}, security={self.security!r}, "
            f"username={self.username!r}, password={password}, timeout={self.timeout}, "
            f"verify_tls={self.verify_tls}, local_hostname={self.local_hostname!r}"
            + (f", oauth2={self.oauth2!r})" if self.oauth2 is not None else ")")
        )

    __str__ = __repr__

    def check(self) -> None:
        """Nothing more to check without connecting (the URL or block was checked when read)."""

    def new_transport(self) -> SmtpTransport:
        """A new, unopened connection (``factory.TransportSetup``)."""
        return SmtpTransport(self)

    def to_url(self) -> str:
        """The URL form, without the password (for messages and logs)."""
        user = f"{self.username}@" if self.username else ""
        query = f"?security={self.security}"
        if self.timeout != 30.0:
            query += f"&timeout={self.timeout:g}"
        if not self.verify_tls:
            query += "&verify=false"
        return f"smtp://{user}{self.where}{query}"

    @classmethod
    def from_url(cls, url: str, password: SecretStr | str | None = None) -> SmtpConfig:
        """Parse ``smtp://user@host:port?security=none|starttls|ssl&timeout=10&verify=false``.

        ``smtps://`` means ``security=ssl``. Without a port: 25 (none), 587 (starttls), 465 (ssl);
        ``smtp://host:465`` without ``security=`` means ssl. A password in the URL is accepted,
        but ``password`` (MAILCAST_SMTP_PASSWORD) wins when both are given.
        """
        shown = redact_url(url)

        def bad(problem: str) -> SpecError:
            return SpecError(
                f"invalid SMTP URL {shown!r}: {problem}", where="--smtp", hint=_URL_HINT
            )

        try:
            parts = urlsplit(url.strip())
            port = parts.port
            host = parts.hostname
        except ValueError as exc:
            raise bad(str(exc).replace(url, shown) or "cannot parse it") from None
        scheme = parts.scheme.lower()
        if scheme not in ("smtp", "smtps"):
            raise bad("it must start with smtp:// or smtps://")
        if not host:
            raise bad("no host")
        if parts.path not in ("", "/"):
            raise bad(f"unexpected path {parts.path!r}")
        if parts.fragment:
            raise bad("unexpected #fragment")

        options: dict[str, str] = {}
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise bad(f"cannot parse the options {parts.query!r}") from None
        for key, value in pairs:
            key = key.lower()
            if key not in _URL_OPTIONS:
                raise bad(f"unknown option {key!r} (known: {', '.join(_URL_OPTIONS)})")
            if key in options:
                raise bad(f"option {key!r} given twice")
            options[key] = value

        security: str
        if "security" in options:
            security = options["security"].lower()
            if security not in SECURITIES:
                raise bad(f"security must be one of {', '.join(SECURITIES)}, not {security!r}")
            if scheme == "smtps" and security != "ssl":
                raise bad(f"smtps:// means security=ssl, not {security!r}")
        elif scheme == "smtps" or port == 465:
            security = "ssl"
        else:
            security = "starttls"

        timeout = 30.0
        if "timeout" in options:
            try:
                timeout = float(options["timeout"])
            except ValueError:
                raise bad(
                    f"timeout must be a number of seconds, not {options['timeout']!r}"
                ) from None
            if not timeout > 0:
                raise bad("timeout must be > 0")

        verify = True
        if "verify" in options:
            flag = options["verify"].lower()
            if flag not in _TRUE | _FALSE:
                raise bad(f"verify must be true or false, not {options['verify']!r}")
            verify = flag in _TRUE

        if port == 0:
            raise bad("port must be 1-65535")
        username = unquote(parts.username) if parts.username else None
        if password is None and parts.password is not None:
            password = unquote(parts.password)
        secret = SecretStr(password) if isinstance(password, str) else password
        return cls(
            host=host,
            port=port if port is not None else DEFAULT_PORTS[security],
            security=security,  # type: ignore[arg-type]  # checked against SECURITIES above
            username=username,
            password=secret,
            timeout=timeout,
            verify_tls=verify,
            local_hostname=options.get("local_hostname") or None,
        )


class SmtpTransport:
    """One SMTP connection, opened lazily and reused for every ``send``. Not thread-safe.

    ``send`` reconnects by itself after the connection was lost or closed by the server. When a
    connection that already carried messages turns out closed at the next message's MAIL (the
    server silently dropped it while idle, or answered 421: most often a per-connection message
    limit), nothing of that message was accepted: ``send`` reconnects and tries once more at
    once (not an attempt, not a slow-down). No message can be duplicated by this.
    """

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self.where = config.where
        self._smtp: smtplib.SMTP | None = None
        self._sent_on_connection = 0

    def __repr__(self) -> str:
        state = "open" if self._smtp is not None else "closed"
        return f"SmtpTransport({self.config.to_url()!r}, {state})"

    def __enter__(self) -> SmtpTransport:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    # -- connection ------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self.config.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def open(self) -> None:
        """Connect, EHLO, STARTTLS (then EHLO again) and log in, as configured. No-op if open."""
        if self._smtp is not None:
            return
        cfg = self.config
        where = self.where
        try:
            if cfg.security == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host,
                    cfg.port,
                    local_hostname=cfg.local_hostname,
                    timeout=cfg.timeout,
                    context=self._tls_context(),
                )
            else:
                smtp = smtplib.SMTP(
                    cfg.host, cfg.port, local_hostname=cfg.local_hostname, timeout=cfg.timeout
                )
        except smtplib.SMTPConnectError as exc:
            # A greeting other than 220 ("421 busy", "554 no service"): not about any message,
            # so not an SmtpReplyError; 4xx is worth retrying later, which callers do.
            busy = 400 <= exc.smtp_code < 500
            raise ConnectError(
                f"the server refused the connection: {exc.smtp_code} {_text(exc.smtp_error)}",
                where=where,
                hint="the server is busy or limits connections: retry later, or use fewer "
                "parallel connections"
                if busy
                else None,
                code=exc.smtp_code,
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"certificate verification failed: {exc.verify_message or exc}",
                where=where,
                hint="fix the server's certificate, or set verify=false (verify_tls) for a test server",
            ) from None
        except ssl.SSLError as exc:
            raise TlsError(
                f"TLS handshake failed: {exc}", where=where, hint=_SECURITY_HINT
            ) from None
        except smtplib.SMTPServerDisconnected as exc:
            hint = None
            if cfg.security != "ssl" and cfg.port == 465:
                hint = "port 465 expects TLS from the start: use security=ssl (smtps://)"
            raise ConnectError(
                f"connected, but got no greeting from the server ({exc})", where=where, hint=hint
            ) from None
        except TimeoutError:
            raise ConnectError(
                f"cannot connect: timed out after {cfg.timeout:g}s", where=where
            ) from None
        except socket.gaierror as exc:
            raise ConnectError(
                f"cannot connect: unknown host {cfg.host!r} ({exc.strerror or exc})", where=where
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect: {exc.strerror or exc}", where=where) from None

        try:
            self._setup(smtp)
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        self._sent_on_connection = 0
        log.debug("connected to %s (%s)", where, cfg.security)

    def _setup(self, smtp: smtplib.SMTP) -> None:
        """EHLO, STARTTLS, EHLO, AUTH on a fresh connection; any failure raises a TransportError."""
        cfg = self.config
        where = self.where
        step = "EHLO"
        try:
            smtp.ehlo_or_helo_if_needed()
            if cfg.security == "starttls":
                step = "STARTTLS"
                if not smtp.has_extn("starttls"):
                    raise TlsError(
                        "the server does not offer STARTTLS",
                        where=where,
                        hint="use security=ssl for port 465, or security=none for a local relay "
                        "without TLS",
                    )
                try:
                    smtp.starttls(context=self._tls_context())
                except smtplib.SMTPResponseException as exc:
                    raise TlsError(
                        f"STARTTLS refused: {exc.smtp_code} {_text(exc.smtp_error)}", where=where
                    ) from None
                except ssl.SSLCertVerificationError as exc:
                    raise TlsError(
                        f"certificate verification failed: {exc.verify_message or exc}",
                        where=where,
                        hint="fix the server's certificate, or set verify=false (verify_tls) "
                        "for a test server",
                    ) from None
                except OSError as exc:  # ssl.SSLError, a drop during the handshake, a timeout
                    raise TlsError(f"TLS handshake failed: {exc}", where=where) from None
                step = "EHLO"
                smtp.ehlo_or_helo_if_needed()
            if cfg.username:
                step = "AUTH"
                self._login(smtp)
        except smtplib.SMTPHeloError as exc:
            raise ConnectError(
                f"the server refused EHLO/HELO: {exc.smtp_code} {_text(exc.smtp_error)}",
                where=where,
                code=exc.smtp_code,
            ) from None
        except (AuthError, TlsError):
            raise
        except OSError as exc:  # SMTPServerDisconnected, timeouts, resets
            raise ConnectError(f"connection lost during {step}: {exc}", where=where) from None

    def _login(self, smtp: smtplib.SMTP) -> None:
        cfg = self.config
        user = cfg.username or ""
        if not smtp.has_extn("auth"):
            hint = (
                "many servers offer AUTH only over TLS: use security=starttls or ssl"
                if cfg.security == "none"
                else "check the server's documentation, or remove the username if it needs no login"
            )
            raise AuthError(
                f"cannot log in as {user}: the server does not offer AUTH (security={cfg.security})",
                where=self.where,
                hint=hint,
            )
        if cfg.oauth2 is not None:
            self._login_xoauth2(smtp, user, cfg.oauth2)
            return
        secret = cfg.password.get_secret_value() if cfg.password is not None else ""
        try:
            smtp.login(user, secret)
        except smtplib.SMTPAuthenticationError as exc:
            text = _text(exc.smtp_error)
            if secret:
                text = text.replace(secret, "***")
            raise AuthError(
                f"authentication failed for user {user}: {exc.smtp_code} {text}", where=self.where
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise AuthError(
                f"cannot log in as {user}: the server does not offer AUTH",
                where=self.where,
                hint="many servers offer AUTH only over TLS: use security=starttls or ssl",
            ) from None
        except UnicodeEncodeError:
            raise AuthError(
                f"cannot log in as {user}: smtplib can only send ASCII usernames and passwords",
                where=self.where,
            ) from None
        except smtplib.SMTPServerDisconnected:
            raise
        except smtplib.SMTPException as exc:  # "No suitable authentication method found."
            mechanisms = smtp.esmtp_features.get("auth", "").strip() or "none"
            raise AuthError(
                f"cannot log in as {user}: {exc} (the server offers: {mechanisms})",
                where=self.where,
            ) from None

    def _login_xoauth2(self, smtp: smtplib.SMTP, user: str, provider: TokenProvider) -> None:
        """AUTH XOAUTH2 with the provider's access token. A refused token (the server's error
        challenge is answered with an empty line, then its 535) is replaced once: a second
        refusal is an AuthError."""
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if "XOAUTH2" not in offered:
            raise AuthError(
                f"cannot log in as {user} with OAuth2: the server does not offer XOAUTH2"
                f" (it offers: {' '.join(offered) or 'none'})",
                where=self.where,
                hint=provider.smtp_hint,
            )
        for attempt in (1, 2):
            token = provider.token()

            def respond(challenge: bytes | None = None, token: str = token) -> str:
                # the initial response; an error challenge gets an empty line (then the 535)
                return xoauth2(user, token) if challenge is None else ""

            try:
                smtp.auth("XOAUTH2", respond, initial_response_ok=True)
                return
            except smtplib.SMTPAuthenticationError as exc:
                provider.invalidate(token)
                text = _text(exc.smtp_error).replace(token, "***")
                if attempt == 1 and exc.smtp_code == 535:
                    log.info("%s refused the access token (%s); asking for a new one", self.where,
                             exc.smtp_code)  # fmt: skip
                    continue
                again = " (a new access token was refused too)" if attempt == 2 else ""
                raise AuthError(
                    f"OAuth2 login refused for user {user}: {exc.smtp_code} {text}{again}",
                    where=self.where,
                    hint=provider.smtp_hint,
                ) from None
            except UnicodeEncodeError:
                raise AuthError(
                    f"cannot log in as {user}: XOAUTH2 needs an ASCII user name",
                    where=self.where,
                ) from None
            except smtplib.SMTPServerDisconnected:
                raise
            except smtplib.SMTPException as exc:
                raise AuthError(
                    f"OAuth2 login failed for user {user}: {exc}", where=self.where
                ) from None

    def close(self) -> None:
        """QUIT and close; errors are ignored. The next ``send`` would reconnect."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except Exception:
            pass
        finally:
            smtp.close()

    def _drop(self) -> None:
        """Close our side without QUIT (the server closed, or the state is unknown)."""
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    # -- sending -----------------------------------------------------------------------------

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        """Send one message to one recipient; return the server's reply to DATA.

        Raises ``SmtpReplyError`` (``.code``, ``.stage`` MAIL/RCPT/DATA) when the server refuses
        this message (``.from_server`` False when mailcast refuses it: an internationalized
        address for a server without SMTPUTF8), ``ConnectionLost`` when the connection dropped
        before the reply to DATA (the next call reconnects; ``.maybe_delivered`` when the whole
        message was out and only the reply to it is missing: the server may have accepted it),
        ``AuthError`` for an authentication-class reply at any stage (530, 535, 5.7.8 …) or from
        logging in, and ``ConnectError`` (``.code`` for a "421 busy" greeting) or ``TlsError``
        from (re)connecting.
        """
        if message.count(b"\n") != message.count(b"\r\n"):  # SMTP needs CRLF line ends
            message = _BARE_LF.sub(b"\r\n", message)
        reply = self._send_once(sender, recipient, message, retry=True)
        if reply is None:
            # The server had closed the connection before this message started: nothing of it
            # was accepted, so a second try on a fresh connection cannot duplicate it.
            reply = self._send_once(sender, recipient, message, retry=False)
        assert reply is not None
        return reply

    def _send_once(
        self, sender: str, recipient: str, message: bytes, *, retry: bool
    ) -> Reply | None:
        """One try; with ``retry``, None when a reused connection was found closed at MAIL
        (a drop, or a 421) and the message should go once more on a fresh connection."""
        if self._smtp is None:
            self.open()
        smtp = self._smtp
        assert smtp is not None
        reused = self._sent_on_connection > 0
        options: list[str] = []
        if not (sender.isascii() and recipient.isascii()):
            if not smtp.has_extn("smtputf8"):
                # mailcast's own refusal (RFC 6531: without SMTPUTF8 the address cannot be
                # given): final for the row, but not a reply of the server, so not a bounce
                raise SmtpReplyError(
                    553,
                    "the server does not offer SMTPUTF8, needed for a non-ASCII address",
                    where=self.where,
                    stage="MAIL",
                    from_server=False,
                )
            options.append("SMTPUTF8")
            if smtp.has_extn("8bitmime"):
                options.append("BODY=8BITMIME")
        elif not message.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")

        stage = "MAIL"
        transmitted = False
        try:
            if _can_pipeline(smtp, sender, recipient, options):
                # RFC 2920: MAIL, RCPT and DATA in one write, then their replies (two round
                # trips a message instead of four). A refusal is the first reply refused.
                extra = " " + " ".join(options) if options else ""
                smtp.send(f"MAIL FROM:<{sender}>{extra}\r\nRCPT TO:<{recipient}>\r\nDATA\r\n")
                replies = []
                for step in _STAGES:
                    stage = step  # for a connection lost while reading this reply
                    replies.append(smtp.getreply())
                    if replies[-1][0] == 421:  # the server is closing: no further replies
                        break
                refused = [(st, r) for st, r in zip(_STAGES, replies, strict=False)
                           if r[0] not in _ACCEPTED[st]]  # fmt: skip
                if refused and len(replies) == 3 and replies[2][0] == 354:
                    smtp.send(b".\r\n")  # a server that let DATA in all the same: end it
                    smtp.getreply()
                if refused:
                    self._refused(smtp, *refused[0][1], refused[0][0])
                code, resp = replies[2]
            else:
                code, resp = _mail(smtp, sender, options)
                if code != 250:
                    self._refused(smtp, code, resp, stage)
                stage = "RCPT"
                code, resp = _rcpt(smtp, recipient)
                if code not in (250, 251):
                    self._refused(smtp, code, resp, stage)
                stage = "DATA"
                # smtplib.SMTP.data, step by step, to know when the whole message is out
                code, resp = smtp.docmd("DATA")
            if code != 354:  # the DATA command itself was refused
                self._refused(smtp, code, resp, stage)
            data = _DOT_LINE.sub(b"..", message)
            smtp.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
            transmitted = True
            code, resp = smtp.getreply()
            if not 200 <= code < 300:
                self._refused(smtp, code, resp, stage, rset=False)
        except SmtpReplyError as exc:
            if retry and reused and exc.code == 421 and exc.stage == "MAIL":
                log.debug("421 at MAIL after messages on the connection: %s; reconnecting", exc)
                return None  # _refused dropped the connection
            raise
        except OSError as exc:  # SMTPServerDisconnected, reset, broken pipe, timeout
            self._drop()
            timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)
            if retry and reused and stage == "MAIL" and not timed_out:
                return None
            detail = "timed out" if timed_out else str(exc) or type(exc).__name__
            raise ConnectionLost(
                f"connection lost during {stage}: {detail}",
                where=self.where,
                stage=stage,
                maybe_delivered=transmitted,  # the reply to the final "." never came
            ) from None
        self._sent_on_connection += 1
        return Reply(code, _text(resp))

    def _refused(
        self, smtp: smtplib.SMTP, code: int, resp: bytes | str, stage: str, *, rset: bool = True
    ) -> None:
        """Raise the SmtpReplyError for a refusal, leaving the connection usable or closed; an
        authentication-class reply raises AuthError (the sender's problem: it stops the run)."""
        text = _text(resp)
        if is_auth_reply(code, text):
            self._drop()
            raise AuthError(
                f"the server refused to send without valid authentication: {code} {text}"
                f" (at {stage})",
                where=self.where,
                hint=_AUTH_NEEDED_HINT
                if not self.config.username
                else self.config.oauth2.smtp_hint
                if self.config.oauth2 is not None
                else "check the username and the password (MAILCAST_SMTP_PASSWORD or the SMTP"
                " block), and that this account may send as the sender; then `mailcast resume"
                " RUN_ID` (no recipient was marked failed)",
            )
        error = SmtpReplyError(code, text, where=self.where, stage=stage)
        self._sent_on_connection += 1  # the connection was alive for this transaction
        if code == 421:  # the server is closing the connection
            self._drop()
        elif rset:
            try:
                rset_code, _ = smtp.rset()
            except OSError:
                rset_code = -1
            if rset_code != 250:
                self._drop()
        raise error


# An address smtplib's quoteaddr() would return as "<address>" unchanged: ASCII, no spaces,
# quotes, brackets, parentheses or separators. smtplib parses every address with
# email.utils.parseaddr (~15 % of a sending thread's CPU); these skip it.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+\Z")


# Authentication-class replies (RFC 4954 section 6, RFC 5248's enhanced codes): the server wants
# (other) credentials before it takes any message from this client; at any stage they are about
# the sender, never about a recipient. 530 5.7.0 authentication required, 534 5.7.9 mechanism too
# weak, 535 5.7.8 credentials invalid, 538 5.7.11 encryption required for the mechanism, 525
# 5.7.13 account disabled; 5.7.12 password transition needed, 5.7.14 trust relationship required.
AUTH_REPLY_CODES = frozenset({525, 530, 534, 535, 538})
AUTH_STATUS_CODES = frozenset({"5.7.8", "5.7.9", "5.7.11", "5.7.12", "5.7.13", "5.7.14"})
_ENHANCED = re.compile(r"^\s*([245]\.\d{1,3}\.\d{1,3})\b")
# 5.7.0 is "other security status": an authentication failure only when the reply says so.
_AUTH_WORDS = re.compile(r"authenticat|\bauth\b|log ?in", re.I)
_AUTH_NEEDED_HINT = (
    "the server requires a login: give the username in the SMTP URL (smtp://USER@HOST:PORT) or"
    " block and the password in MAILCAST_SMTP_PASSWORD; then `mailcast resume RUN_ID` (no"
    " recipient was marked failed)"
)


def is_auth_reply(code: int, text: str) -> bool:
    """Is this reply an authentication failure (the sender's, whatever the stage)?"""
    if code in AUTH_REPLY_CODES:
        return True
    if not 400 <= code < 600:
        return False
    m = _ENHANCED.match(text)
    if m is None:
        return False
    status = "5" + m.group(1)[1:]  # 4.7.12 (temporary) is the same condition as 5.7.12
    return status in AUTH_STATUS_CODES or (status == "5.7.0" and bool(_AUTH_WORDS.search(text)))


_STAGES = ("MAIL", "RCPT", "DATA")
_ACCEPTED = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}


def _can_pipeline(smtp: smtplib.SMTP, sender: str, recipient: str, options: list[str]) -> bool:
    """The server offers PIPELINING and both addresses are plain (no SMTPUTF8)."""
    return (
        smtp.does_esmtp
        and smtp.has_extn("pipelining")
        and "SMTPUTF8" not in options
        and _PLAIN_ADDRESS.match(sender) is not None
        and _PLAIN_ADDRESS.match(recipient) is not None
    )


def _mail(smtp: smtplib.SMTP, sender: str, options: list[str]) -> tuple[int, bytes]:
    """``smtp.mail(sender, options)``, without re-parsing a plain address."""
    if (options and any(o.upper() == "SMTPUTF8" for o in options)) or not _PLAIN_ADDRESS.match(
        sender
    ):
        return smtp.mail(sender, options)
    extra = " " + " ".join(options) if options and smtp.does_esmtp else ""
    smtp.putcmd("mail", f"from:<{sender}>{extra}")
    return smtp.getreply()


def _rcpt(smtp: smtplib.SMTP, recipient: str) -> tuple[int, bytes]:
    """``smtp.rcpt(recipient)``, without re-parsing a plain address."""
    if not _PLAIN_ADDRESS.match(recipient):
        return smtp.rcpt(recipient)
    smtp.putcmd("rcpt", f"to:<{recipient}>")
    return smtp.getreply()


def setup_from_url(url: str, settings: Settings) -> SmtpConfig:
    """The transport registry's entry (``factory.KINDS``): ``smtp://`` or ``smtps://``, the
    password from ``MAILCAST_SMTP_PASSWORD`` (or the URL)."""
    return SmtpConfig.from_url(url, settings.smtp_password)
