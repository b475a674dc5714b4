"""Messages as mailcast builds them for a campaign, to hand to a transport directly."""

from __future__ import annotations

from pathlib import Path

from mailcast.compose.composer import Composer
from mailcast.spec import load_spec
from tests.campaigns import people, write_campaign

RICH = {
    "reply_to": "Help Désk <help@mailcast.example>",
    "headers": {"X-Campaign": "spring {{ code }}"},
    "unsubscribe_mailto": "unsub@mailcast.example",
    "tracking_base_url": "https://t.mailcast.example",
}


class Messages:
    """``messages[i]``: the message to person{i}@example.com of a campaign with a reply-to, a
    custom header, List-Unsubscribe(-Post), text and HTML bodies and a PDF attachment."""

    def __init__(self, folder: Path, n: int = 20) -> None:
        self.rows = people(n)
        self.spec = load_spec(write_campaign(folder, self.rows, spec_extra=RICH))
        self.composer = Composer.for_preview(self.spec, list(self.rows[0]), secret=b"k" * 32)
        self.pdf = (folder / "files" / "doc.pdf").read_bytes()

    def address(self, i: int) -> str:
        return str(self.rows[i]["email"])

    def __getitem__(self, i: int) -> bytes:
        return self.composer.compose(i + 1, i + 2, self.address(i), self.rows[i]).data
