"""A Gmail API fake on loopback: ``POST /upload/gmail/v1/users/{userId}/messages/send`` with
``uploadType=media`` (the raw message, ``Content-Type: message/rfc822``) and a Bearer token the
``TokenServer`` issued, answered as Gmail documents it: ``200 {"id", "threadId", "labelIds"}``,
errors as ``{"error": {"code", "message", "errors": [{"domain", "reason", "message"}],
"status"}}``.

Faults per recipient (the message's To: address), each used once, in order: ``429``,
``403-rate`` (userRateLimitExceeded), ``500``, ``400``, ``401`` (every token invalidated first),
``timeout`` (the message is kept, the answer comes after the client gave up).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, defaultdict
from email import message_from_bytes
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.oauth2_fakes import JsonHandler, LoopbackHttp, TokenServer

_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "429": (429, "rateLimitExceeded", "RESOURCE_EXHAUSTED", "Too many concurrent requests"),
    "403-rate": (403, "userRateLimitExceeded", "PERMISSION_DENIED", "User-rate limit exceeded"),
    "500": (500, "backendError", "INTERNAL", "Backend Error"),
    "400": (400, "invalidArgument", "INVALID_ARGUMENT", "Invalid To header"),
}


class GmailFake(LoopbackHttp):
    """The Gmail API's send method on 127.0.0.1. Use as a context manager."""

    def __init__(self, tokens: TokenServer, *, stall: float = 1.0) -> None:
        self.tokens = tokens
        self.stall = stall  # how long a "timeout" fault waits before answering
        self.sent: list[tuple[str, str, bytes]] = []  # (id, recipient, raw message)
        self.requests = 0
        self.faults: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def fail(self, address: str, *faults: str) -> None:
        with self._lock:
            self.faults[address.lower()].extend(faults)

    def copies(self) -> Counter[str]:
        with self._lock:
            return Counter(recipient for _, recipient, _ in self.sent)

    def ids(self) -> dict[str, str]:
        """recipient → the id its (last) accepted message got."""
        with self._lock:
            return {recipient: mid for mid, recipient, _ in self.sent}

    def handle(self, user: str, headers: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
        auth = headers.get("Authorization", "")
        recipient = _recipient(body)
        with self._lock:
            pending = self.faults.get(recipient)
            fault = pending.pop(0) if pending else None
        if fault == "401":
            self.tokens.invalidate_tokens()
        owner = self.tokens.user if user == "me" else user
        if not auth.startswith("Bearer ") or not self.tokens.check(owner, auth[7:]):
            return 401, _error(401, "authError", "UNAUTHENTICATED", "Invalid Credentials")
        if not headers.get("Content-Type", "").startswith("message/"):
            return 400, _error(400, "badContent", "INVALID_ARGUMENT", "Media type not allowed")
        if fault in _ERRORS:
            return _ERRORS[fault][0], _error(*_ERRORS[fault])
        mid = secrets.token_hex(8)
        with self._lock:
            self.sent.append((mid, recipient, body))
        if fault == "timeout":
            time.sleep(self.stall)
        return 200, {"id": mid, "threadId": mid, "labelIds": ["SENT"]}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.body()
                path, _, query = self.path.partition("?")
                parts = path.split("/")
                if (
                    len(parts) == 8
                    and parts[1:5] == ["upload", "gmail", "v1", "users"]
                    and parts[6:] == ["messages", "send"]
                    and "uploadType=media" in query.split("&")
                ):
                    self.reply(*fake.handle(parts[5], self.headers, body))
                else:
                    self.reply(404, _error(404, "notFound", "NOT_FOUND", "Not Found"))

        return Handler


def _recipient(raw: bytes) -> str:
    found = getaddresses(message_from_bytes(raw).get_all("To", []))
    return found[0][1].lower() if found else ""


def _error(code: int, reason: str, status: str, message: str) -> dict[str, Any]:
    domain = "usageLimits" if "Limit" in reason else "global"
    return {
        "error": {
            "code": code,
            "message": message,
            "errors": [{"message": message, "domain": domain, "reason": reason}],
            "status": status,
        }
    }
