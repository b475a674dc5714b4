"""The preview is the message (issue 10, acceptance 4): for a tracked campaign with an
attachment, the .eml ``mailcast preview`` writes for a recipient equals what that recipient
receives in a real send (the CLI, the flow, a capturing SMTP server on loopback), apart from
Date, Message-ID, MIME boundaries and the tracking tokens (they name the delivery): the same
headers (List-Unsubscribe and List-Unsubscribe-Post included), the same parts, the same decoded
bodies."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.cli import app
from tests.campaigns import people, write_campaign

SECRET = "preview-equals-send-secret-0123456789abcdef"
HTML = """<html><body>
<h1>Hello {{ first_name }} {{ last_name }}</h1>
<p><a href="https://shop.example/spring?utm_source=mail&amp;utm_campaign=spring">Spring picks</a></p>
<p><a href="https://shop.example/account?code={{ code }}">Your account</a></p>
<p><a data-notrack href="https://shop.example/privacy">Privacy</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>
"""
TEXT = (
    "Hello {{ first_name }}, see https://shop.example/spring\nUnsubscribe: {{ unsubscribe_url }}\n"
)
TOKEN = re.compile(r"\b[a-z2-7]{24,}\b")  # tracking tokens: base32 of ≥ 16 bytes, lower case
BOUNDARY = re.compile(r'boundary="[^"]*"')
IGNORED = {"date", "message-id"}


def parse(data: bytes) -> EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def untokened(text: str) -> str:
    return TOKEN.sub("TOKEN", text)


def shape(msg: EmailMessage) -> dict[str, Any]:
    """What a recipient sees, without what names the delivery."""
    headers = [
        (name.lower(), BOUNDARY.sub('boundary="B"', untokened(str(value))))
        for name, value in msg.items()
        if name.lower() not in IGNORED
    ]
    parts = []
    for part in msg.walk():
        ctype = part.get_content_type()
        entry: dict[str, Any] = {
            "type": ctype,
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
            "charset": part.get_content_charset(),
        }
        if part is not msg:  # the message's own headers are compared above
            entry["headers"] = [
                (k.lower(), BOUNDARY.sub('boundary="B"', untokened(str(v))))
                for k, v in part.items()
            ]
        if not part.is_multipart():
            content = part.get_content()
            entry["body"] = untokened(content) if isinstance(content, str) else content
        parts.append(entry)
    return {"headers": headers, "parts": parts}


@pytest.mark.slow
def test_the_preview_of_a_tracked_campaign_is_the_message_sent(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    spec = write_campaign(
        tmp_path / "c", people(3), html=HTML, text=TEXT,
        spec_extra={
            "tracking_base_url": "https://t.mailcast.example",
            "bounce_domain": "bounces.mailcast.example",
            "unsubscribe_mailto": "unsubscribe@mailcast.example",
        },
    )  # fmt: skip
    runner = CliRunner()
    previews = tmp_path / "preview"
    result = runner.invoke(app, ["preview", str(spec), "--out", str(previews), "--limit", "3"])
    assert result.exit_code == 0, result.output
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with CaptureServer() as server:
        result = runner.invoke(app, ["send", str(spec), "--send", "--smtp", server.url, "--db", db])
        assert result.exit_code == 0, result.output
    received = {m.rcpt_tos[0]: parse(m.data) for m in server.messages}
    assert len(received) == 3

    emls = sorted(previews.glob("*.eml"))
    assert len(emls) == 3
    for path in emls:
        preview = parse(path.read_bytes())
        rcpt = preview["To"].addresses[0].addr_spec
        sent = received[rcpt]
        assert preview["List-Unsubscribe"] and preview["List-Unsubscribe-Post"], path.name
        assert TOKEN.search(str(preview["List-Unsubscribe"])), preview["List-Unsubscribe"]
        a, b = shape(preview), shape(sent)
        assert a["headers"] == b["headers"], path.name
        assert a["parts"] == b["parts"], path.name
        assert [p["type"] for p in a["parts"]][-1] == "application/pdf"
