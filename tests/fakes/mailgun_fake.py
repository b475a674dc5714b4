"""A fake of Mailgun's MIME upload (``POST /v3/{domain}/messages.mime``).

As documented: HTTP Basic ``api:KEY``; multipart/form-data with ``to`` (required) and the
``message`` file (required, a MIME message with a From header); 200 with
``{"id": "<...@domain>", "message": "Queued. Thank you."}``; errors as ``{"message": ...}``;
401 "Forbidden" for a bad key; 404 for a domain the account does not have; 413 over 25 MB.
"""

from __future__ import annotations

import json
import re
from email import message_from_bytes
from typing import Any

from tests.fakes.http_fake import Answer, BadRequest, FakeApi, basic_auth

MAX_BYTES = 25 * 1024 * 1024
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_NAME = re.compile(rb'name="([^"]*)"')
_FILENAME = re.compile(rb'filename="([^"]*)"')


def form_parts(content_type: str, body: bytes) -> list[tuple[str, bool, bytes]]:
    """(field name, is a file, exact bytes) of each part of a multipart/form-data body."""
    match = _BOUNDARY.search(content_type or "")
    if not content_type.startswith("multipart/form-data") or not match:
        raise ValueError("not multipart/form-data")
    delimiter = b"--" + match.group(1).encode()
    sections = body.split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise ValueError("no closing delimiter")
    parts = []
    for section in sections[1:-1]:
        head, sep, content = section.partition(b"\r\n\r\n")
        name = _NAME.search(head)
        if not sep or not content.endswith(b"\r\n") or not name:
            raise ValueError("malformed part")
        parts.append((name.group(1).decode(), bool(_FILENAME.search(head)), content[:-2]))
    return parts


class FakeMailgun(FakeApi):
    name = "mailgun"

    def __init__(
        self, *faults: Any, api_key: str = "key-test", domain: str = "mg.example.com", **kwargs: Any
    ) -> None:
        super().__init__(*faults, **kwargs)
        self.api_key = api_key
        self.domain = domain

    def path_matches(self, path: str) -> bool:
        return path == f"/v3/{self.domain}/messages.mime"

    def authorized(self, headers: Any) -> bool:
        return basic_auth(headers) == ("api", self.api_key)

    def new_id(self, seq: int) -> str:
        return f"<20261130074500.{seq}.fake@{self.domain}>"

    def success(self, ids: list[str], recipients: list[str]) -> Answer:
        return Answer(200, json.dumps({"id": ids[0], "message": "Queued. Thank you."}).encode())

    def error(self, status: int, message: str) -> Answer:
        if status == 401:
            return Answer(401, b"Forbidden", content_type="text/plain")
        return Answer(status, json.dumps({"message": message}).encode())

    def quota_answer(self) -> Answer:
        return self.error(
            429, "Domain mg.example.com is not allowed to send: sending limit exceeded"
        )

    def reject_answer(self, recipient: str) -> Answer:
        return self.error(400, "to parameter is not a valid address. please check documentation")

    def parse(
        self, path: str, headers: Any, body: bytes
    ) -> list[tuple[str, dict[str, Any], bytes | None]]:
        if len(body) > MAX_BYTES:
            raise BadRequest(self.error(413, "Request Entity Too Large"))
        try:
            parts = form_parts(headers.get("Content-Type", ""), body)
        except ValueError as exc:
            raise BadRequest(self.error(400, f"Bad request: {exc}")) from None
        fields = {name: content for name, _, content in parts if name != "message"}
        files = [content for name, is_file, content in parts if name == "message" and is_file]
        if "to" not in fields:
            raise BadRequest(self.error(400, "to parameter is missing"))
        if not files:
            raise BadRequest(self.error(400, "'message' parameter is not a file"))
        mime = files[0]
        if not message_from_bytes(mime).get("From"):
            raise BadRequest(self.error(400, "from parameter is missing"))
        recipients = [a.strip() for a in fields["to"].decode().split(",") if a.strip()]
        if not recipients or not all("@" in r for r in recipients):
            raise BadRequest(self.reject_answer(fields["to"].decode()))
        stored = {k: v.decode() for k, v in fields.items()}
        return [(r, stored, mime) for r in recipients]
