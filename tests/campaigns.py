"""Building test campaigns on disk: a spec, templates, recipient data, an attachment."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import yaml

HTML = """<html><body>
<h1>Hello {{ first_name }} {{ last_name }}</h1>
<p>Your code is {{ code }}. City: {{ city }}.</p>
</body></html>
"""
TEXT = """Hello {{ first_name }} {{ last_name }},
your code is {{ code }}. City: {{ city }}.
"""


def pdf_bytes(size: int = 20_000) -> bytes:
    """Bytes that look like a PDF and cover every byte value (an attachment must be intact)."""
    body = bytes(range(256)) * (size // 256) + os.urandom(size % 256)
    return b"%PDF-1.4\n" + body + b"\n%%EOF\n"


def people(n: int) -> list[dict[str, str]]:
    return [
        {
            "email": f"person{i}@example.com",
            "first_name": f"Fïrst{i}",
            "last_name": f"Låst{i}",
            "city": ["Paris", "Zürich", "東京", "Lagos"][i % 4],
            "code": f"C{i:06d}",
        }
        for i in range(n)
    ]


def write_campaign(
    folder: Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    name: str = "test-campaign",
    attachments: bool = True,
    data_file: str | None = None,
    spec_extra: dict[str, Any] | None = None,
    html: str = HTML,
    text: str = TEXT,
) -> Path:
    """Write spec.yaml, templates, data/recipients.csv and files/doc.pdf; return the spec path."""
    (folder / "templates").mkdir(parents=True, exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "templates" / "body.html.j2").write_text(html, encoding="utf-8")
    (folder / "templates" / "body.txt.j2").write_text(text, encoding="utf-8")
    if rows is not None:
        with (folder / "data" / "recipients.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    spec: dict[str, Any] = {
        "name": name,
        "sender": "Test Sender <sender@mailcast.example>",
        "subject": "{{ first_name }}, your code {{ code }}",
        "html": "templates/body.html.j2",
        "text": "templates/body.txt.j2",
        "recipients": {"path": data_file or "data/recipients.csv"},
        "chunk_size": 250,
        "connections": 4,
        # Tests send a campaign again on purpose (a resume, a second transport, a fault): the
        # repeat guard has its own tests (test_audience_campaigns.py), which leave this out.
        "allow_repeats": True,
    }
    if attachments:
        (folder / "files").mkdir(exist_ok=True)
        (folder / "files" / "doc.pdf").write_bytes(pdf_bytes())
        spec["attachments"] = ["files/doc.pdf"]
    spec.update(spec_extra or {})
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return path
