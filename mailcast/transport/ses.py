"""Amazon SES (the v2 API) as a transport: each message is the raw MIME mailcast builds,
sent with ``SendEmail`` (``Content.Raw``) to its one recipient, through boto3.

One boto3 client per worker process and settings, shared by the process's connections (boto3
clients are thread-safe; its connection pool keeps the HTTPS connections alive). boto3's own
retries are off: mailcast's engine retries, with the run-wide slow-down on throttling.

What SES answers, as transport-neutral outcomes:

* accepted → ``Reply`` with SES's ``MessageId`` (stored as the row's ``provider_message_id``);
* ``TooManyRequestsException``, ``Throttling``, ``LimitExceededException``, a sending quota or
  rate exceeded → throttled (the whole run slows down, the message is retried);
* a 5xx → temporary (retried);
* ``MessageRejected``, ``BadRequestException``, ``MailFromDomainNotVerifiedException`` and any
  other 4xx → permanent for the row;
* refused credentials (``UnrecognizedClientException``, ``InvalidClientTokenId``,
  ``SignatureDoesNotMatch``, ``AccessDenied`` …), a suspended or paused account, a missing
  configuration set → ``AuthError``: the run stops, nobody is marked failed;
* no answer after the request was sent (a read timeout, the connection closed while waiting)
  → ``ConnectionLost(maybe_delivered=True)``: the row is ``unknown``, never re-sent on its own;
* SES cannot be reached (connection refused, a connect timeout) → ``ConnectError``.

URL form (no secret in it; credentials from the worker's AWS chain: instance role, ``AWS_*``
environment, profile): ``ses://REGION?configuration_set=NAME&endpoint_url=URL&timeout=30``.
With a saved block (``blocks/ses.py``) the access key comes from the block.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import SecretStr

from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    RefusalKind,
    SpecError,
    TlsError,
    TransportError,
)
from mailcast.redact import redact_url
from mailcast.transport.base import Reply

if TYPE_CHECKING:
    from mailcast.settings import Settings

__all__ = ["SesSetup", "SesTransport", "setup_from_url"]

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_URL_OPTIONS = ("configuration_set", "endpoint_url", "timeout")
_URL_HINT = "e.g. ses://eu-west-1 or ses://eu-west-1?configuration_set=newsletter"
CONNECT_TIMEOUT = 10.0
MAX_POOL = 100  # HTTPS connections kept alive per process (one per engine connection)

THROTTLED = frozenset(
    {
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "LimitExceededException",
        "SendingQuotaExceeded",
        "MaxSendRateExceeded",
        "DailyQuotaExceeded",
    }
)
CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "AccessDeniedException",
        "IncompleteSignature",
        "InvalidSignatureException",
        "MissingAuthenticationToken",
        "ExpiredToken",
        "ExpiredTokenException",
    }
)
# The account or the run's settings cannot send at all: no recipient's failure.
ACCOUNT = {
    "AccountSuspendedException": "the AWS account's sending is suspended",
    "SendingPausedException": "the AWS account's (or configuration set's) sending is paused",
    "NotFoundException": "the configuration set does not exist in this region",
}


@dataclass(frozen=True)
class SesSetup:
    """How to reach SES (``factory.TransportSetup``). Holds the secret key: never stored."""

    region: str
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    configuration_set: str | None = None
    endpoint_url: str | None = None
    timeout: float = 30.0

    @property
    def where(self) -> str:
        return f"SES {self.region}"

    def check(self) -> None:
        """The region's name (one SES has, unless an endpoint is given), the keys complete,
        credentials present; nothing is sent."""
        where = self.where
        if not _REGION.match(self.region):
            raise SpecError(
                f"{self.region!r} is not an AWS region name", where=where, hint=_URL_HINT
            )
        if self.endpoint_url is None and self.region not in ses_regions():
            raise SpecError(
                f"SES (v2) is not offered in region {self.region!r}",
                where=where,
                hint="choose one of: " + ", ".join(sorted(ses_regions())),
            )
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise AuthError(
                "the block has only half of the access key (id and secret go together)",
                where=where,
                hint="set both access_key_id and secret_access_key in the SES block, or neither"
                " (then the worker's AWS credentials are used)",
            )
        if not self.access_key_id and not _has_credentials(self):
            raise AuthError(
                "no AWS credentials found for SES",
                where=where,
                hint="save the access key in the SES block (--transport-block), or give the "
                "worker AWS credentials (an instance role, AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, a profile)",
            )

    def new_transport(self) -> SesTransport:
        return SesTransport(self)


def setup_from_url(url: str, settings: Settings) -> SesSetup:
    """The transport registry's entry (``factory.KINDS``): ``ses://REGION?options``."""
    shown = redact_url(url)

    def bad(problem: str) -> SpecError:
        return SpecError(
            f"invalid SES URL {shown!r}: {problem}", where="--transport", hint=_URL_HINT
        )

    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "ses":
        raise bad("it must start with ses://")
    if parts.username or parts.password:
        raise bad("no keys in the URL: save them in an SES block (--transport-block NAME)")
    region = parts.netloc.lower()
    if not region:
        raise bad("no region (ses://REGION)")
    if parts.path not in ("", "/") or parts.fragment:
        raise bad(f"unexpected {parts.path or '#' + parts.fragment!r}")
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _URL_OPTIONS:
            raise bad(f"unknown option {key!r} (known: {', '.join(_URL_OPTIONS)})")
        options[key] = value
    try:
        timeout = float(options.get("timeout", "30"))
    except ValueError:
        raise bad(f"timeout must be a number of seconds, not {options['timeout']!r}") from None
    if not timeout > 0:
        raise bad("timeout must be > 0")
    return SesSetup(
        region=region,
        configuration_set=options.get("configuration_set") or None,
        endpoint_url=options.get("endpoint_url") or None,
        timeout=timeout,
    )


def _boto3() -> Any:
    try:
        import boto3
    except ImportError:
        raise SpecError(
            "the Amazon SES transport needs boto3, which is not installed",
            where="ses",
            hint="pip install 'mailcast[ses]'",
        ) from None
    return boto3


_regions: set[str] = set()


def ses_regions() -> set[str]:
    """The regions where boto3 knows an SES v2 endpoint (every partition)."""
    if not _regions:
        session = _boto3().session.Session()
        for partition in session.get_available_partitions():
            _regions.update(session.get_available_regions("sesv2", partition))
    return _regions


def _session(setup: SesSetup) -> Any:
    secret = setup.secret_access_key.get_secret_value() if setup.secret_access_key else None
    return _boto3().session.Session(
        aws_access_key_id=setup.access_key_id or None,
        aws_secret_access_key=secret,
        region_name=setup.region,
    )


def _has_credentials(setup: SesSetup) -> bool:
    """Whether the worker's AWS credential chain finds credentials (a broken source counts as
    none)."""
    try:
        return _session(setup).get_credentials() is not None
    except Exception:  # botocore: a malformed profile, an unusable container URI …
        return False


_clients: dict[tuple[int, SesSetup], Any] = {}  # by process: a forked worker makes its own
_clients_lock = threading.Lock()


def client_for(setup: SesSetup) -> Any:
    """The process's boto3 SES v2 client for these settings (made once; thread-safe)."""
    key = (os.getpid(), setup)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},  # the engine retries
                connect_timeout=min(CONNECT_TIMEOUT, setup.timeout),
                read_timeout=setup.timeout,
                max_pool_connections=MAX_POOL,
                tcp_keepalive=True,
                user_agent_extra="mailcast",
            )
            client = _session(setup).client("sesv2", endpoint_url=setup.endpoint_url, config=config)
            _clients[key] = client
        return client


class SesTransport:
    """One engine connection's view of SES (the HTTP connections are the shared client's)."""

    def __init__(self, setup: SesSetup) -> None:
        self.setup = setup
        self.where = setup.where
        self._client: Any = None

    def __repr__(self) -> str:
        return f"SesTransport({self.where!r})"

    def open(self) -> None:
        if self._client is None:
            try:
                self._client = client_for(self.setup)
            except Exception as exc:  # botocore: an unusable endpoint URL, region …
                raise TransportError(
                    f"cannot set up the SES client: {exc}", where=self.where, hint=_URL_HINT
                ) from None

    def close(self) -> None:
        self._client = None  # the process's client and its pool stay for the next one

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        """``SendEmail`` with the raw message, to ``recipient`` only. SES sends from the
        message's From address (a verified identity); ``sender``, the envelope sender, is SES's
        own (bounces come back as SES notifications)."""
        if self._client is None:
            self.open()
        params: dict[str, Any] = {
            "Destination": {"ToAddresses": [recipient]},
            "Content": {"Raw": {"Data": message}},
        }
        if self.setup.configuration_set:
            params["ConfigurationSetName"] = self.setup.configuration_set
        try:
            answer = self._client.send_email(**params)
        except Exception as exc:
            raise self._outcome(exc) from None
        status = int(answer.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))
        return Reply(status, "accepted", provider_message_id=str(answer["MessageId"]))

    def _outcome(self, exc: Exception) -> Exception:
        """What SES's error (or the lack of an answer) means for the message and the run."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
            SSLError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = self.where
        if isinstance(exc, ClientError):
            return refusal(exc.response, where)
        if isinstance(exc, ReadTimeoutError | ConnectionClosedError):
            # The request went out whole; the answer never came: SES may have the message.
            return ConnectionLost(
                f"no answer from SES after the message was sent ({type(exc).__name__})",
                where=where,
                maybe_delivered=True,
            )
        if isinstance(exc, SSLError):
            return TlsError(f"TLS with SES failed: {exc}", where=where)
        if isinstance(exc, BotoConnectionError):  # refused, unreachable, connect timeout
            return ConnectError(
                f"cannot reach SES: {exc}",
                where=where,
                hint="check the network (and endpoint_url); the run waits and tries again",
            )
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return AuthError(
                f"no AWS credentials: {exc}",
                where=where,
                hint="save the access key in the SES block or give the worker AWS credentials",
            )
        if isinstance(exc, BotoCoreError):
            return ConnectionLost(f"{type(exc).__name__}: {exc}", where=where)
        return exc


def refusal(response: dict[str, Any], where: str) -> Exception:
    """SES's error answer as mailcast's outcome (``DeliveryRefused`` with the HTTP status and
    ``Code: message``, or ``AuthError`` for what stops the run)."""
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    text = " ".join(str(error.get("Message") or "").split())
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    said = f"{code}: {text}" if text else code or "no error text"
    if code in CREDENTIALS or status in (401, 403):
        return AuthError(
            f"SES refused the credentials: {said}",
            where=where,
            hint="check the SES block's access key (or the worker's AWS credentials) and that "
            "its IAM policy allows ses:SendRawEmail and ses:SendEmail",
        )
    if code in ACCOUNT:
        return AuthError(
            f"{ACCOUNT[code]}: {said}",
            where=where,
            hint="check the account in the SES console (sending status, configuration sets)",
        )
    lowered = text.lower()
    if code in THROTTLED or status == 429 or "rate exceeded" in lowered or "quota" in lowered:
        kind = RefusalKind.THROTTLED
    elif status >= 500:
        kind = RefusalKind.TEMPORARY
    else:
        kind = RefusalKind.PERMANENT
    return DeliveryRefused(status, said, kind=kind, where=where)
