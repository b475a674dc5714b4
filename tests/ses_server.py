"""A local Amazon SES for the tests: moto in server mode on 127.0.0.1, and a small
fault-injecting HTTP proxy in front of it that answers as SES does (the v2 REST/JSON protocol:
the error's code in ``x-amzn-ErrorType``, its text in the body's ``message``).

Faults are set per recipient (the request's ``Destination.ToAddresses``), each used once, in
order: ``throttle`` (429 TooManyRequestsException), ``unavailable`` (503), ``reject`` (400
MessageRejected), ``timeout`` (the request reaches SES, which keeps the message, and the answer
comes only after the client gave up). ``bad_credentials`` refuses every request with 403
UnrecognizedClientException, as SES does for an unknown access key."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
SENDER = "sender@mailcast.example"  # the tests' campaigns send from it (write_campaign)

ERRORS = {
    "throttle": (429, "TooManyRequestsException", "Maximum sending rate exceeded."),
    "unavailable": (503, "ServiceUnavailable", "Service unavailable, try again later."),
    "reject": (400, "MessageRejected", "Email address is not verified."),
    "bad_credentials": (
        403,
        "UnrecognizedClientException",
        "The security token included in the request is invalid.",
    ),
}


class FaultProxy:
    """The proxy: forwards to moto unless a fault is due. Thread-safe."""

    def __init__(self, upstream: tuple[str, int], timeout_delay: float = 2.0) -> None:
        self.upstream = upstream
        self.timeout_delay = timeout_delay
        self.faults: dict[str, list[str]] = {}
        self.bad_credentials = False
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms waits)

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.handle(self, body)

            do_GET = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fault(self, recipient: str, *kinds: str) -> None:
        with self._lock:
            self.faults.setdefault(recipient, []).extend(kinds)

    def _due(self, recipient: str) -> str | None:
        with self._lock:
            self.requests[recipient] += 1
            pending = self.faults.get(recipient)
            return pending.pop(0) if pending else None

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        recipient = ""
        if body.startswith(b"{"):
            destination = json.loads(body).get("Destination") or {}
            recipient = (destination.get("ToAddresses") or [""])[0]
        fault = "bad_credentials" if self.bad_credentials else self._due(recipient)
        if fault in ERRORS:
            status, code, text = ERRORS[fault]
            self._answer(
                handler, status, {"x-amzn-ErrorType": code}, json.dumps({"message": text}).encode()
            )
            return
        status, headers, answer = self._forward(handler, body)
        if fault == "timeout":  # SES has it; the client stops waiting before the answer comes
            time.sleep(self.timeout_delay)
        with contextlib.suppress(OSError):  # the client gave up and closed the connection
            self._answer(handler, status, headers, answer)

    def _forward(
        self, handler: BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
            conn.request(handler.command, handler.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            kept = ("content-type", "x-amzn-errortype", "x-amzn-requestid")
            return (
                response.status,
                {k: v for k, v in response.getheaders() if k.lower() in kept},
                data,
            )
        finally:
            conn.close()

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", headers.get("content-type", "application/json"))
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        handler.wfile.flush()

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def moto_ses() -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port), SES's state reset, the sender verified."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("POST", "/moto-api/reset")
        conn.getresponse().read()
        conn.close()
        client = boto3.client(
            "sesv2", region_name=REGION, endpoint_url=url,
            aws_access_key_id="AKIATEST", aws_secret_access_key="test-secret",
        )  # fmt: skip
        client.create_email_identity(EmailIdentity=SENDER)
        identities = client.list_email_identities()["EmailIdentities"]
        assert SENDER in [i["IdentityName"] for i in identities]
        yield url
    finally:
        server.stop()


def upstream(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://host:port`` URL."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


def sent_messages() -> list[Any]:
    """What moto's SES accepted (its backend, in this process): message id, destinations, raw."""
    from moto.ses.models import ses_backends

    return list(ses_backends[ACCOUNT][REGION].sent_messages)


def sent_to(address: str) -> list[Any]:
    """The messages SES accepted for ``address`` (the request's destination)."""
    return [m for m in sent_messages() if m.destinations and m.destinations[0] == address]
