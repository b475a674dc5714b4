"""A fake of SendGrid's v3 Mail Send endpoint (``POST /v3/mail/send``).

As documented: ``Authorization: Bearer KEY``; a JSON body with ``personalizations`` (each with
``to``), ``from``, a ``subject`` (here or per personalization), ``content`` (text/plain before
text/html, values non-empty), ``headers`` (strings, none of the reserved ones), ``attachments``
(``content`` and ``filename``); 202 with an empty body and the ``X-Message-Id`` header; errors as
``{"errors": [{"message", "field", "help"}]}``; 413 over 30 MB.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from tests.fakes.http_fake import Answer, BadRequest, FakeApi

RESERVED = {
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
}  # fmt: skip
MAX_BYTES = 30 * 1024 * 1024


class FakeSendGrid(FakeApi):
    name = "sendgrid"

    def __init__(self, *faults: Any, api_key: str = "SG.test-key", **kwargs: Any) -> None:
        super().__init__(*faults, **kwargs)
        self.api_key = api_key

    def path_matches(self, path: str) -> bool:
        return path == "/v3/mail/send"

    def authorized(self, headers: Any) -> bool:
        return headers.get("Authorization") == f"Bearer {self.api_key}"

    def new_id(self, seq: int) -> str:
        return f"{secrets.token_urlsafe(16)[:18]}{seq:04d}"

    def success(self, ids: list[str], recipients: list[str]) -> Answer:
        return Answer(202, b"", {"X-Message-Id": ids[0]}, content_type="text/plain")

    def error(self, status: int, message: str, field: str | None = None) -> Answer:
        body = {"errors": [{"message": message, "field": field, "help": None}]}
        return Answer(status, json.dumps(body).encode())

    def quota_answer(self) -> Answer:
        return self.error(401, "Maximum credits exceeded")

    def reject_answer(self, recipient: str) -> Answer:
        return self.error(
            400, "Does not contain a valid address.", field="personalizations.0.to.0.email"
        )

    def _bad(self, message: str, field: str | None = None) -> BadRequest:
        return BadRequest(self.error(400, message, field))

    def parse(
        self, path: str, headers: Any, body: bytes
    ) -> list[tuple[str, dict[str, Any], bytes | None]]:
        if len(body) > MAX_BYTES:
            raise BadRequest(
                self.error(413, "The JSON payload you have included in your request is too large.")
            )
        try:
            mail = json.loads(body)
        except ValueError:
            raise self._bad("Bad Request", None) from None
        if not isinstance(mail, dict):
            raise self._bad("Bad Request", None)
        sender = mail.get("from")
        if not isinstance(sender, dict) or not sender.get("email"):
            raise self._bad("The from object must be provided for every email send.", "from")
        people = mail.get("personalizations")
        if not isinstance(people, list) or not people:
            raise self._bad("You must have at least one personalization.", "personalizations")
        recipients: list[str] = []
        for i, p in enumerate(people):
            to = p.get("to") if isinstance(p, dict) else None
            if (
                not isinstance(to, list)
                or not to
                or not all(isinstance(t, dict) and "@" in str(t.get("email", "")) for t in to)
            ):
                raise self._bad(
                    "Each to object must at least have an email address.",
                    f"personalizations.{i}.to",
                )
            if not (mail.get("subject") or p.get("subject")):
                raise self._bad("The subject is required.", "subject")
            recipients += [t["email"] for t in to]
        content = mail.get("content")
        if not isinstance(content, list) or not content:
            raise self._bad(
                "Unless a valid template_id is provided, the content parameter is required.",
                "content",
            )
        types = [c.get("type") for c in content]
        if "text/plain" in types and types.index("text/plain") != 0:
            raise self._bad(
                "If present, text/plain must be first, followed by text/html.", "content"
            )
        if any(not c.get("value") for c in content):
            raise self._bad(
                "The content value must be a string at least one character in length.",
                "content.0.value",
            )
        extra = mail.get("headers") or {}
        for name, value in extra.items():
            if not isinstance(value, str):
                raise self._bad("Invalid type. Expected: string, given: object.", f"headers.{name}")
            if name.lower() in RESERVED:
                raise self._bad(f"The {name} header is reserved and cannot be set.", "headers")
        for i, a in enumerate(mail.get("attachments") or []):
            if not a.get("content") or not a.get("filename"):
                raise self._bad(
                    "The attachment content and filename are required.", f"attachments.{i}"
                )
        return [(r, mail, None) for r in recipients]
