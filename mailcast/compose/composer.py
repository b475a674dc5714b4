"""The Composer: the one place a recipient becomes message bytes.

render (the sandboxed templates) → tracking (links, open pixel, List-Unsubscribe headers, the
VERP return path) → build (MIME, spliced from parts built once per campaign) → sign (DKIM,
``compose/dkim.py``, when the campaign has ``dkim``: it sees the final bytes, so previews are
signed too).

The send engine, ``mailcast preview`` and the web console all compose through it, so a preview
is the message that is sent (apart from Date, Message-ID, MIME boundaries and the tracking
tokens, which name the delivery).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mailcast.compose.mime import MessageBuilder
from mailcast.compose.templates import CampaignTemplates, Rendered
from mailcast.engagement.links import Tracker, is_tracked
from mailcast.recipients.model import Recipient
from mailcast.spec import CampaignSpec

Signer = Callable[[bytes], bytes]


def message_id_for(run_id: str, delivery_id: int, domain: str) -> str:
    """Deterministic per run and recipient: a re-send carries the same Message-ID."""
    return f"<{run_id}.{delivery_id}@{domain}>"


def envelope_address(address: str) -> str:
    """The address to send to: an internationalized domain as its ASCII (IDNA) form when the
    local part is ASCII, so the message needs no SMTPUTF8. A non-ASCII local part is kept (it
    needs SMTPUTF8, which the transport asks for, or refuses the row when not offered)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii() or not local.isascii():
        return address
    import idna

    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except (idna.IDNAError, UnicodeError):
        return address


@dataclass(frozen=True)
class Composed:
    """One composed message: its Message-ID, bytes, envelope sender (None: the campaign's) and
    the rendered parts (for a preview's .html)."""

    message_id: str
    data: bytes
    envelope_sender: str | None
    rendered: Rendered


class Composer:
    """Turns a recipient (a delivery id, row number, address and fields) into message bytes.
    Built once per campaign per process (templates compiled, attachments encoded); ``compose``
    is thread-safe."""

    def __init__(
        self,
        spec: CampaignSpec,
        columns: Sequence[str],
        *,
        run_id: str,
        tracker: Tracker,
        signer: Signer | None = None,
    ) -> None:
        self.spec = spec
        self.run_id = run_id
        self.templates = CampaignTemplates(spec, columns)
        self.builder = MessageBuilder(spec)
        self.tracker = tracker
        if signer is None and spec.dkim is not None:  # the key is read and parsed once, here
            from mailcast.compose.dkim import signer_for

            signer = signer_for(spec)
        self.signer = signer
        self.domain = self.builder.envelope_sender.rpartition("@")[2] or "mailcast.invalid"

    @property
    def envelope_sender(self) -> str:
        """The campaign's own envelope sender (MAIL FROM) when tracking sets none per message."""
        return self.builder.envelope_sender

    @property
    def per_message_sender(self) -> bool:
        """Whether messages have their own envelope sender (a VERP return path)."""
        return self.tracker.active and bool(self.tracker.bounce_domain)

    @classmethod
    def for_run(cls, spec: CampaignSpec, run_id: str, ledger: Any) -> Composer:
        """The composer of a planned run: the columns come from the ledger, tracked links are
        registered there."""
        tracker = Tracker.for_run(spec, run_id, ledger.engine)  # inert when tracking is off
        return cls(spec, ledger.columns(run_id), run_id=run_id, tracker=tracker)

    @classmethod
    def for_preview(
        cls, spec: CampaignSpec, columns: Sequence[str], secret: bytes | None = None
    ) -> Composer:
        """A composer for previews: tracking as in a real send, but links numbered in memory
        (nothing is written to the ledger). Without a tracking secret the tokens are made with
        a throwaway one (a preview's tokens name no delivery anyway)."""
        if is_tracked(spec) and secret is None:
            try:
                from mailcast.engagement import tokens

                secret = tokens.load_secret()
            except Exception:  # no secret configured: a preview still shows the tracking
                import secrets

                secret = secrets.token_bytes(32)
        tracker = Tracker.for_run(spec, "preview", None, secret=secret, link_ids=_PreviewLinks())
        return cls(spec, columns, run_id="preview", tracker=tracker)

    def compose(
        self, delivery_id: int, row: int, address: str, fields: Mapping[str, Any]
    ) -> Composed:
        """The message for one recipient (``delivery_id`` names it in tracking tokens and the
        Message-ID). Raises TemplateError or MessageBuildError (the recipient's message cannot
        be built)."""
        tracker = self.tracker
        message_id = message_id_for(self.run_id, delivery_id, self.domain)
        recipient = Recipient(row, address, dict(fields))
        extra = {
            "message_id": message_id,
            **tracker.context(delivery_id),
        }  # unsubscribe_url, preferences_url
        rendered, head = tracker.apply(delivery_id, self.templates.render(recipient, extra))
        data = self.builder.build(
            rendered, envelope_address(address), message_id, row=row, extra_head=head
        )
        if self.signer is not None:
            data = self.signer(data)
        return Composed(message_id, data, tracker.envelope_sender(delivery_id), rendered)

    def __call__(self, claim: Any) -> tuple[str, bytes]:
        """The engine's ``Compose``: a claimed ledger row → (Message-ID, bytes)."""
        composed = self.compose(claim.id, claim.row_no, claim.address, claim.fields)
        return composed.message_id, composed.data

    def sender_for(self, claim: Any) -> str | None:
        """The engine's per-row envelope sender: the VERP return path, or None."""
        return self.tracker.envelope_sender(claim.id)


class _PreviewLinks:
    """Link ids for a preview: numbered in memory, in the order the links are first seen."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, links: list[tuple[str, int]]) -> dict[str, int]:
        with self._lock:
            for url, _position in links:
                self._ids.setdefault(url, len(self._ids) + 1)
            return {u: self._ids[u] for u, _ in links}
