"""What the fake mail APIs share: a small real HTTP/1.1 server on 127.0.0.1 (keep-alive, one
thread per connection), a store of the messages it accepted, and scripted faults.

Faults (``Fault``), each for ``times`` requests (optionally only those to one ``recipient``,
after ``skip`` matching requests):

* ``throttle``: 429 with ``Retry-After`` and the provider's error body;
* ``quota``: the provider's "quota exceeded" answer;
* ``error``: a 500;
* ``timeout``: the request is read and the message *stored as received*, then the server sleeps
  past the client's timeout (``hang`` seconds) before answering: the client never sees the
  answer;
* ``auth``: the provider's answer to bad credentials (also what a wrong key gets, always);
* ``reject``: the provider's 400 for a bad message.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

FAULT_KINDS = ("throttle", "quota", "error", "timeout", "auth", "reject")


@dataclass
class Fault:
    kind: str
    times: int = 1
    recipient: str | None = None
    skip: int = 0
    retry_after: int | None = 1

    def __post_init__(self) -> None:
        assert self.kind in FAULT_KINDS, self.kind


@dataclass(frozen=True)
class Received:
    """One message the fake accepted (or received before it hung up)."""

    recipient: str
    provider_id: str
    fields: dict[str, Any]  # the JSON message, or the form fields
    mime: bytes | None = None  # the raw message of a MIME upload


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class BadRequest(Exception):
    """The fake's answer to a request it refuses."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class FakeApi:
    """Base of the fakes. Subclasses give the endpoint (``path_matches``), the credential check
    (``authorized``), the parse and validation of a request (``parse``: the recipients and what
    to store, or ``BadRequest``), the success answer and the error answers."""

    name: ClassVar[str] = "fake"

    def __init__(self, *faults: Fault, hang: float = 1.5) -> None:
        self.faults = list(faults)
        self.hang = hang
        self.received: list[Received] = []
        self.requests = 0
        self.answered: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._seq = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                answer = fake._handle(self.path, self.headers, body)
                if answer is None:  # hung up after the client's timeout: nothing to say
                    self.close_connection = True
                    return
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self._headers_buffer.append(b"\r\n" + answer.body)  # one write
                self.flush_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeApi:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at ------------------------------------------------------------------------

    def count(self, recipient: str) -> int:
        with self._lock:
            return sum(1 for r in self.received if r.recipient == recipient)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(r.recipient for r in self.received)

    def by_recipient(self, recipient: str) -> Received:
        with self._lock:
            found = [r for r in self.received if r.recipient == recipient]
        assert len(found) == 1, (recipient, len(found))
        return found[0]

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    # -- the provider's part -----------------------------------------------------------------------

    def path_matches(self, path: str) -> bool:
        raise NotImplementedError

    def authorized(self, headers: Any) -> bool:
        raise NotImplementedError

    def parse(
        self, path: str, headers: Any, body: bytes
    ) -> list[tuple[str, dict[str, Any], bytes | None]]:
        """(recipient, fields to store, raw MIME) per message of the request, or BadRequest."""
        raise NotImplementedError

    def success(self, ids: list[str], recipients: list[str]) -> Answer:
        raise NotImplementedError

    def error(self, status: int, message: str) -> Answer:
        raise NotImplementedError

    def new_id(self, seq: int) -> str:
        raise NotImplementedError

    def quota_answer(self) -> Answer:
        return self.error(429, "daily sending quota exceeded")

    def reject_answer(self, recipient: str) -> Answer:
        return self.error(400, f"{recipient} is not a valid address")

    # -- the request ----------------------------------------------------------------------------

    def _take_fault(self, recipients: list[str]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times <= 0:
                    continue
                if fault.recipient is not None and fault.recipient not in recipients:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                return fault
        return None

    def _store(self, messages: list[tuple[str, dict[str, Any], bytes | None]]) -> list[str]:
        with self._lock:
            ids = []
            for recipient, fields, mime in messages:
                self._seq += 1
                pid = self.new_id(self._seq)
                ids.append(pid)
                self.received.append(Received(recipient, pid, fields, mime))
            return ids

    def _handle(self, path: str, headers: Any, body: bytes) -> Answer | None:
        with self._lock:
            self.requests += 1
        answer = self._answer(path, headers, body)
        if answer is not None:
            with self._lock:
                self.answered[answer.status] += 1
        return answer

    def _answer(self, path: str, headers: Any, body: bytes) -> Answer | None:
        if not self.path_matches(path):
            return self.error(404, "Not Found")
        if not self.authorized(headers):
            return self.error(401, "Unauthorized: bad credentials")
        try:
            messages = self.parse(path, headers, body)
        except BadRequest as exc:
            return exc.answer
        fault = self._take_fault([m[0] for m in messages])
        if fault is not None:
            if fault.kind == "timeout":
                self._store(messages)  # received whole: the provider has it
                time.sleep(self.hang)
                return None
            return self._fault_answer(fault, messages[0][0])
        return self.success(self._store(messages), [m[0] for m in messages])

    def _fault_answer(self, fault: Fault, recipient: str) -> Answer:
        if fault.kind == "throttle":
            answer = self.error(429, "Too Many Requests")
            if fault.retry_after is not None:
                answer.headers["Retry-After"] = str(fault.retry_after)
            return answer
        if fault.kind == "quota":
            return self.quota_answer()
        if fault.kind == "error":
            return self.error(500, "Internal Server Error")
        if fault.kind == "auth":
            return self.error(401, "Unauthorized: bad credentials")
        return self.reject_answer(recipient)


def basic_auth(headers: Any) -> tuple[str, str] | None:
    """The (user, password) of an HTTP Basic ``Authorization`` header."""
    import base64

    value = headers.get("Authorization") or ""
    if not value.startswith("Basic "):
        return None
    with contextlib.suppress(ValueError):
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password
    return None
