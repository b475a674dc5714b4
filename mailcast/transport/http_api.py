"""What the HTTP API transports (SendGrid, Mailgun, Mailjet) share: one ``httpx.Client`` per
worker process (thread-safe, keep-alive, HTTP/2 where the provider's server offers it), and the
mapping of an HTTP answer to mailcast's transport-neutral outcomes (their configuration:
``api_config``).

Answers: 2xx → a ``Reply`` with the provider's message id; 429 and "quota exceeded" answers →
``DeliveryRefused(kind=THROTTLED)`` (the run-wide slow-down; a ``Retry-After`` is quoted in the
text); 5xx and 408 → temporary; 401/403 (and 404: no such domain or endpoint) → ``AuthError``,
which stops the run without failing anyone; other 4xx (400, 413, 422 ...) → permanent, with the
provider's status and message. On the wire: no connection → ``ConnectError`` (nothing was sent);
the request not written whole → ``ConnectionLost`` (retried); written whole but no answer (a
read timeout, a dropped connection) → ``ConnectionLost(maybe_delivered=True)``: the row becomes
``unknown`` and is never re-sent on its own.

Secrets travel only in the ``Authorization`` header of each request; ``where`` and every message
show the base URL without credentials.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import json
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, NoReturn, Protocol, TypeVar

import httpx

from mailcast import __version__
from mailcast.errors import (
    AuthError,
    ConnectError,
    ConnectionLost,
    DeliveryRefused,
    RefusalKind,
    TlsError,
)
from mailcast.transport.api_config import ApiEndpoint
from mailcast.transport.base import Reply

__all__ = ["ApiRequest", "ApiTransport", "basic_auth", "json_body", "shared_client"]

CONNECT_TIMEOUT = 10.0
# 4xx answers that mean "you sent too much" (a plan's daily quota, credits), not "bad message"
_QUOTA = re.compile(
    r"credits? exceeded|quota|(?:sending|daily|hourly|rate) limit|limit (?:exceeded|reached)"
    r"|too many",
    re.I,
)


# -- one client per worker process ---------------------------------------------------------------

_clients: dict[tuple[int, float, bool], httpx.Client] = {}
_clients_lock = threading.Lock()


def shared_client(timeout: float, verify_tls: bool) -> httpx.Client:
    """The process's HTTP client for these settings, shared by every connection (thread) of
    every run: a pool of keep-alive connections, HTTP/2 over TLS where the server offers it.
    A forked process gets its own."""
    key = (os.getpid(), timeout, verify_tls)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # TCP_NODELAY: a request's headers and body go out at once, not after an ACK
            transport = httpx.HTTPTransport(
                http2=True,
                verify=verify_tls,
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            )
            client = _clients[key] = httpx.Client(
                transport=transport,
                timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
                headers={"User-Agent": f"mailcast/{__version__}"},
                follow_redirects=False,
            )
        return client


def close_clients() -> None:
    """Close this process's clients (tests, and the end of a worker)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


# -- the transport ---------------------------------------------------------------------------


@dataclass(repr=False)
class ApiRequest:
    """One HTTP request to a provider: a path under the base URL and httpx keyword arguments.
    Its headers hold the credentials: it has no repr."""

    path: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None

    @classmethod
    def json(cls, path: str, body: Any, **kwargs: Any) -> ApiRequest:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return cls(path, headers=headers, content=content, **kwargs)


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> ApiEndpoint: ...


C = TypeVar("C", bound=HasEndpoint)


class ApiTransport(Generic[C]):
    """The Transport of an HTTP API provider: one message, one POST. Subclasses build the request
    (``request``), read the provider's id from an acceptance (``accepted``) and its message from
    an error body (``error_text``). One instance is one engine connection; the HTTP connections
    are the process's shared client's."""

    auth_hint: ClassVar[str] = "check the API key"

    def __init__(self, config: C) -> None:
        self.config = config
        self.endpoint = config.endpoint
        self.where = config.endpoint.where
        self._client: httpx.Client | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where})"

    def open(self) -> None:
        """Nothing to do on the network: the shared client connects on the first request."""
        if self._client is None:
            self._client = shared_client(self.endpoint.timeout, self.endpoint.verify_tls)

    def close(self) -> None:
        self._client = None  # the shared client and its connections stay for the next run

    def send(self, sender: str, recipient: str, message: bytes) -> Reply:
        self.open()
        request = self.request(sender, recipient, message)
        response = self._post(request)
        if 200 <= response.status_code < 300:
            return self.accepted(response)
        self.refuse(response)

    # -- what each provider defines -----------------------------------------------------------

    def request(self, sender: str, recipient: str, message: bytes) -> ApiRequest:
        raise NotImplementedError

    def accepted(self, response: httpx.Response) -> Reply:
        raise NotImplementedError

    def error_text(self, response: httpx.Response) -> str:
        """The provider's message in an error answer (default: the body's text)."""
        return _body_text(response)

    # -- shared ----------------------------------------------------------------------------------

    def _post(self, request: ApiRequest) -> httpx.Response:
        assert self._client is not None
        try:
            return self._client.post(
                self.endpoint.url(request.path),
                headers=request.headers,
                content=request.content,
                data=request.data,
                files=request.files,
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectError(f"cannot reach the API: {_what(exc)}", where=self.where) from None
        except httpx.ConnectError as exc:
            if isinstance(exc.__context__, ssl.SSLError) or "SSL" in str(exc):
                raise TlsError(f"TLS with the API failed: {_what(exc)}", where=self.where) from None
            raise ConnectError(f"cannot reach the API: {_what(exc)}", where=self.where) from None
        except (httpx.WriteTimeout, httpx.WriteError) as exc:
            # the request was not written whole: the provider cannot have accepted it
            raise ConnectionLost(
                f"request not sent whole: {_what(exc)}", where=self.where
            ) from None
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            raise ConnectionLost(
                f"no answer to the request: {_what(exc)}", where=self.where, maybe_delivered=True
            ) from None
        except httpx.HTTPError as exc:  # anything else before the request could go out
            raise ConnectError(f"cannot use the API: {_what(exc)}", where=self.where) from None

    def refuse(self, response: httpx.Response) -> NoReturn:
        """Raise the outcome of a non-2xx answer."""
        code = response.status_code
        text = " ".join(self.error_text(response).split())[:500] or response.reason_phrase
        wait = retry_after(response)
        if code == 429 or (400 <= code < 500 and _QUOTA.search(text)):
            note = f" (Retry-After {wait:g}s)" if wait is not None else ""
            raise DeliveryRefused(code, text + note, kind=RefusalKind.THROTTLED, where=self.where)
        if code in (401, 403):
            raise AuthError(
                f"the API refused the credentials: {code} {text}",
                where=self.where,
                hint=self.auth_hint,
            )
        if code == 404:
            raise AuthError(
                f"the API has no such endpoint or domain: {code} {text}",
                where=self.where,
                hint=f"check the base URL (and the domain); {self.auth_hint}",
            )
        if code >= 500 or code == 408 or code < 400:
            raise DeliveryRefused(code, text, kind=RefusalKind.TEMPORARY, where=self.where)
        raise DeliveryRefused(code, text, kind=RefusalKind.PERMANENT, where=self.where)


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` header value."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (a number or an HTTP date), None when absent."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


def json_body(response: httpx.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def _body_text(response: httpx.Response) -> str:
    body = json_body(response)
    if isinstance(body, dict):
        for key in ("message", "error", "ErrorMessage"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.text[:500]


def _what(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
