"""A fast fake of SendGrid's v3 Mail Send API for the HTTP-provider scenario, in its own process
(uvicorn, one worker), so its CPU is not the sender's::

    python -m bench.api_fake --key KEY

``POST /v3/mail/send``: checks ``Authorization: Bearer KEY``, reads the JSON and its required
fields (personalizations[].to[].email, from.email, a subject, content), answers 202 with an
``X-Message-Id`` (401 for a wrong key, 400 for a bad body). ``GET /stats`` answers
``{"requests", "accepted", "recipients", "duplicates"}``: a message to a recipient already
accepted counts as a duplicate. It prints ``ready PORT`` once listening and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class MailSend:
    """The ASGI app: one event loop, so the counters need no lock."""

    def __init__(self, key: str) -> None:
        self.auth = f"Bearer {key}".encode()
        self.requests = 0
        self.accepted = 0
        self.seen: set[str] = set()
        self.duplicates = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET" and scope["path"] == "/stats":
            stats = {
                "requests": self.requests,
                "accepted": self.accepted,
                "recipients": len(self.seen),
                "duplicates": self.duplicates,
            }
            await _answer(send, 200, json.dumps(stats).encode())
            return
        if scope["method"] != "POST" or scope["path"] != "/v3/mail/send":
            await _answer(send, 404, b'{"errors":[{"message":"Not Found"}]}')
            return
        self.requests += 1
        if dict(scope["headers"]).get(b"authorization") != self.auth:
            await _answer(send, 401, b'{"errors":[{"message":"Permission denied, wrong key"}]}')
            return
        try:
            mail = json.loads(body)
            recipients = [t["email"] for p in mail["personalizations"] for t in p["to"]]
            assert mail["from"]["email"] and mail["content"][0]["value"]
            assert mail.get("subject") or all(p.get("subject") for p in mail["personalizations"])
        except (ValueError, KeyError, TypeError, IndexError, AssertionError):
            await _answer(send, 400, b'{"errors":[{"message":"Bad Request","field":null}]}')
            return
        for r in recipients:
            if r in self.seen:
                self.duplicates += 1
            self.seen.add(r)
        self.accepted += 1
        headers = [(b"x-message-id", f"bench{self.accepted:012d}".encode())]
        await _answer(send, 202, b"", headers)


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description="a fake SendGrid Mail Send API for the benchmark")
    ap.add_argument("--key", required=True)
    args = ap.parse_args()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        MailSend(args.key), log_level="warning", access_log=False, lifespan="off",
        timeout_keep_alive=60,
    )  # fmt: skip
    server = uvicorn.Server(config)
    print(f"ready {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])
    sys.exit(0)


if __name__ == "__main__":
    main()
