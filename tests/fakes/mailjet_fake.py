"""A fake of Mailjet's Send API v3.1 (``POST /v3.1/send``).

As documented: HTTP Basic with the API key and the secret key; ``{"Messages": [...]}`` (1 to 50
messages), each with ``From.Email``, ``To`` (each with ``Email``), ``TextPart`` and/or
``HTMLPart``, ``Headers`` without the reserved ones; ``SandboxMode``. 200 with a status per
message and, per recipient, ``MessageUUID``, ``MessageID`` and ``MessageHref``; a message error
is a 400 with ``{"Messages": [{"Status": "error", "Errors": [{"ErrorIdentifier", "ErrorCode",
"StatusCode", "ErrorMessage", "ErrorRelatedTo"}]}]}``; a bad key a 401 with ``ErrorMessage``.
In sandbox mode the request is checked and answered as usual, and nothing is stored.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.fakes.http_fake import Answer, BadRequest, FakeApi, basic_auth

RESERVED = {
    "from", "sender", "subject", "to", "cc", "bcc", "return-path", "delivered-to",
    "dkim-signature", "domainkey-status", "received-spf", "authentication-results", "received",
    "x-mailjet-prio", "x-mailjet-debug", "user-agent", "x-mailer", "x-mj-customid",
    "x-mj-eventpayload", "x-mj-vars", "x-mj-templateerrordeliver",
    "x-mj-templateerrorreporting", "x-mj-templatelanguage", "x-mj-templateid",
    "content-type", "content-transfer-encoding", "mime-version", "reply-to",
}  # fmt: skip


class FakeMailjet(FakeApi):
    name = "mailjet"

    def __init__(
        self,
        *faults: Any,
        api_key: str = "mj-public",
        secret_key: str = "mj-private",
        **kwargs: Any,
    ) -> None:
        super().__init__(*faults, **kwargs)
        self.keys = (api_key, secret_key)
        self.sandboxed = 0

    def path_matches(self, path: str) -> bool:
        return path == "/v3.1/send"

    def authorized(self, headers: Any) -> bool:
        return basic_auth(headers) == self.keys

    def new_id(self, seq: int) -> str:
        return str(1152921500000000000 + seq)

    def success(self, ids: list[str], recipients: list[str]) -> Answer:
        messages = [
            {
                "Status": "success",
                "CustomID": "",
                "To": [
                    {
                        "Email": recipient,
                        "MessageUUID": str(uuid.uuid4()),
                        "MessageID": int(mid),
                        "MessageHref": f"https://api.mailjet.com/v3/REST/message/{mid}",
                    }
                ],
                "Cc": [],
                "Bcc": [],
            }
            for recipient, mid in zip(recipients, ids, strict=True)
        ]
        return Answer(200, json.dumps({"Messages": messages}).encode())

    def error(self, status: int, message: str) -> Answer:
        body = {"ErrorIdentifier": str(uuid.uuid4()), "ErrorMessage": message, "StatusCode": status}
        return Answer(status, json.dumps(body).encode())

    def message_error(self, code: str, message: str, related: str) -> Answer:
        error = {
            "ErrorIdentifier": str(uuid.uuid4()),
            "ErrorCode": code,
            "StatusCode": 400,
            "ErrorMessage": message,
            "ErrorRelatedTo": [related],
        }
        body = {"Messages": [{"Status": "error", "Errors": [error]}]}
        return Answer(400, json.dumps(body).encode())

    def reject_answer(self, recipient: str) -> Answer:
        return self.message_error(
            "mj-0013", f'"{recipient}" is an invalid email address.', "To[0].Email"
        )

    def parse(
        self, path: str, headers: Any, body: bytes
    ) -> list[tuple[str, dict[str, Any], bytes | None]]:
        try:
            request = json.loads(body)
        except ValueError:
            raise BadRequest(self.error(400, "Malformed JSON")) from None
        messages = request.get("Messages") if isinstance(request, dict) else None
        if not isinstance(messages, list) or not 1 <= len(messages) <= 50:
            raise BadRequest(
                self.message_error("send-0002", "Messages must hold 1 to 50 messages", "Messages")
            )
        out: list[tuple[str, dict[str, Any], bytes | None]] = []
        for m in messages:
            if not isinstance(m.get("From"), dict) or "@" not in str(m["From"].get("Email", "")):
                raise BadRequest(
                    self.message_error("mj-0013", "From.Email is mandatory", "From.Email")
                )
            to = m.get("To")
            if not isinstance(to, list) or not to:
                raise BadRequest(
                    self.message_error("mj-0004", "At least one recipient is required", "To")
                )
            for t in to:
                if "@" not in str(t.get("Email", "")):
                    raise BadRequest(self.reject_answer(str(t.get("Email"))))
            if not m.get("TextPart") and not m.get("HTMLPart"):
                raise BadRequest(
                    self.message_error(
                        "send-0003", "At least TextPart or HTMLPart is required", "TextPart"
                    )
                )
            for name, value in (m.get("Headers") or {}).items():
                if name.lower() in RESERVED or not isinstance(value, str):
                    raise BadRequest(
                        self.message_error(
                            "send-0010", f"Header {name} cannot be set", f"Headers.{name}"
                        )
                    )
            out += [(t["Email"], m, None) for t in to]
        if request.get("SandboxMode"):  # checked, answered, not delivered
            self.sandboxed += len(out)
            recipients = [r for r, _, _ in out]
            raise BadRequest(self.success([self.new_id(0)] * len(out), recipients))
        return out
