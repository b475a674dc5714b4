"""Tracking at render time: rewrite the links of a rendered HTML body to the tracking service's
``/c/{token}``, add the open pixel before ``</body>``, compute the ``List-Unsubscribe`` headers
and the VERP return path.

The send step calls a :class:`Tracker` per message (through the ``Composer``, ``mailcast/compose/composer.py``)::

    tracker = Tracker.for_run(spec, run_id, ledger.engine)   # inert when tracking is off
    extra = {"message_id": message_id, **tracker.context(delivery_id)}  # unsubscribe_url …
    rendered = templates.render(recipient, extra)
    rendered, head = tracker.apply(delivery_id, rendered)    # tracked links, pixel, headers
    data = head + builder.build(rendered, ...)
    envelope sender: tracker.envelope_sender(delivery_id) or the campaign's sender

What is rewritten: ``<a href="http(s)://…">`` anchors of the HTML body, except those with a
``data-notrack`` attribute and those pointing at the tracking service itself (the unsubscribe
link). ``mailto:``, ``tel:``, ``#fragment`` and relative links are left alone, as is the text
body. The original URL goes to the ``links`` table; the click redirect reads it from there.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mailcast.engagement import tokens

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from mailcast.compose.templates import Rendered
    from mailcast.spec import CampaignSpec

ONE_CLICK = "List-Unsubscribe=One-Click"

# An attribute inside a start tag: name, then optionally = and a (quoted or bare) value.
_ATTR = re.compile(
    r"""\s*(?P<name>[^\s"'<>/=]+)(?:\s*=\s*(?P<value>"[^"]*"|'[^']*'|[^\s"'=<>`]+))?""", re.S
)
_TAG_NAME = re.compile(r"<\s*[A-Za-z][^\s/>]*", re.S)


@dataclass(frozen=True, slots=True)
class Anchor:
    """An ``href`` value found in the HTML: where its (possibly quoted) value is, and the URL."""

    start: int  # offset of the value (including its quotes) in the document
    end: int
    url: str  # entity-decoded
    notrack: bool


class _AnchorFinder(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=False)
        self.text = text
        self.anchors: list[Anchor] = []
        self._line_starts = [0]
        for m in re.finditer("\n", text):
            self._line_starts.append(m.end())

    def _offset(self) -> int:
        line, col = self.getpos()
        return self._line_starts[line - 1] + col

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        raw = self.get_starttag_text() or ""
        start = self._offset()
        if self.text[start : start + len(raw)] != raw:  # pragma: no cover - defensive
            return
        m = _TAG_NAME.match(raw)
        pos = m.end() if m else 2
        found: tuple[int, int, str] | None = None
        notrack = False
        while True:
            a = _ATTR.match(raw, pos)
            if a is None or a.end() == pos:
                break
            pos = a.end()
            name = a.group("name").lower()
            if name == "data-notrack":
                notrack = True
            elif name == "href" and found is None and a.group("value") is not None:
                value = a.group("value")
                bare = value[1:-1] if value[:1] in "\"'" else value
                found = (start + a.start("value"), start + a.end("value"), bare)
        if found is not None:
            s, e, bare = found
            self.anchors.append(Anchor(s, e, html.unescape(bare).strip(), notrack))

    handle_startendtag = handle_starttag


def find_anchors(text: str) -> list[Anchor]:
    """Every ``<a href>`` of an HTML document (not those inside comments or scripts)."""
    finder = _AnchorFinder(text)
    finder.feed(text)
    finder.close()
    return finder.anchors


def trackable(url: str, base_url: str | None = None) -> bool:
    """http(s) links to somewhere other than the tracking service itself."""
    lower = url.lower()
    if not (lower.startswith("http://") or lower.startswith("https://")):
        return False
    if any(c in url for c in "\r\n\t") or len(url) > 8000:
        return False
    return not (base_url and lower.startswith(base_url.lower() + "/"))


def rewrite_links(
    text: str, replacement: Callable[[str, int], str | None], *, base_url: str | None = None
) -> str:
    """``text`` with the href of each trackable anchor replaced by ``replacement(url,
    position)`` (positions count the trackable anchors from 1; None keeps the link)."""
    parts: list[str] = []
    last = 0
    position = 0
    for a in find_anchors(text):
        if a.notrack or not trackable(a.url, base_url):
            continue
        position += 1
        new = replacement(a.url, position)
        if new is None:
            continue
        parts.append(text[last : a.start])
        parts.append('"' + html.escape(new, quote=True) + '"')
        last = a.end
    parts.append(text[last:])
    return "".join(parts)


def tracked_urls(text: str, *, base_url: str | None = None) -> list[tuple[str, int]]:
    """(url, position) of the anchors :func:`rewrite_links` would rewrite."""
    found: list[tuple[str, int]] = []
    for a in find_anchors(text):
        if not a.notrack and trackable(a.url, base_url):
            found.append((a.url, len(found) + 1))
    return found


def add_pixel(text: str, pixel_url: str) -> str:
    """The open pixel as the last thing before ``</body>`` (or at the end)."""
    img = (
        f'<img src="{html.escape(pixel_url, quote=True)}" width="1" height="1" alt=""'
        ' style="display:block;width:1px;height:1px;border:0" />'
    )
    at = text.lower().rfind("</body>")
    if at < 0:
        return text + img
    return text[:at] + img + text[at:]


# -- per run ----------------------------------------------------------------------------------

_links_lock = threading.Lock()
_link_ids: dict[tuple[str, str], dict[str, int]] = {}  # (database, run) -> url -> link id


class Tracker:
    """What tracking does to each message of a run. Inert (no context, no change, no headers,
    the campaign's own envelope sender) when the campaign sets neither ``tracking_base_url``
    nor ``bounce_domain`` nor ``unsubscribe_mailto``."""

    def __init__(
        self,
        *,
        run_id: str,
        engine: Engine | None,
        secret: bytes | None,
        base_url: str | None = None,
        track_opens: bool = True,
        track_clicks: bool = True,
        bounce_domain: str | None = None,
        unsubscribe_mailto: str | None = None,
        own_list_unsubscribe: bool = False,
        link_ids: Callable[[list[tuple[str, int]]], dict[str, int]] | None = None,
    ) -> None:
        self.run_id = run_id
        # url → link id: registered in the ledger (a run), or numbered in memory (a preview)
        self._ids_of = link_ids
        self.engine = engine
        self.secret = secret or b""
        self.base_url = base_url.rstrip("/") if base_url else None
        self.track_opens = bool(self.base_url) and track_opens
        self.track_clicks = (
            bool(self.base_url) and track_clicks and (engine is not None or link_ids is not None)
        )
        self.bounce_domain = bounce_domain
        self.unsubscribe_mailto = unsubscribe_mailto
        # A campaign that sets List-Unsubscribe itself keeps its own header.
        self.list_unsubscribe = not own_list_unsubscribe and bool(
            self.base_url or unsubscribe_mailto
        )

    @property
    def active(self) -> bool:
        return bool(self.base_url or self.bounce_domain or self.unsubscribe_mailto)

    @classmethod
    def for_run(
        cls,
        spec: CampaignSpec,
        run_id: str,
        engine: Engine | None,
        secret: bytes | None = None,
        *,
        link_ids: Callable[[list[tuple[str, int]]], dict[str, int]] | None = None,
    ) -> Tracker:
        """The tracker of a run; loads the secret (TrackingError when tracking is on and there is
        none)."""
        if is_tracked(spec) and secret is None:
            secret = tokens.load_secret()
        return cls(
            run_id=run_id,
            engine=engine,
            secret=secret,
            base_url=spec.tracking_base_url,
            track_opens=spec.track_opens,
            track_clicks=spec.track_clicks,
            bounce_domain=spec.bounce_domain,
            unsubscribe_mailto=spec.unsubscribe_mailto,
            own_list_unsubscribe=any(h.lower() == "list-unsubscribe" for h in spec.headers),
            link_ids=link_ids,
        )

    # -- URLs -------------------------------------------------------------------------------------

    def unsubscribe_url(self, delivery_id: int) -> str:
        return f"{self.base_url}/u/{tokens.make(self.secret, tokens.UNSUBSCRIBE, delivery_id)}"

    def preferences_url(self, delivery_id: int) -> str:
        return f"{self.base_url}/p/{tokens.make(self.secret, tokens.PREFERENCES, delivery_id)}"

    def pixel_url(self, delivery_id: int) -> str:
        return f"{self.base_url}/o/{tokens.make(self.secret, tokens.OPEN, delivery_id)}.gif"

    def click_url(self, delivery_id: int, link_id: int) -> str:
        return f"{self.base_url}/c/{tokens.make(self.secret, tokens.CLICK, delivery_id, link_id)}"

    # -- per message ------------------------------------------------------------------------------

    def context(self, delivery_id: int) -> dict[str, str]:
        """Template variables: ``unsubscribe_url`` and ``preferences_url`` (the page where the
        recipient chooses the lists to stay on), when there is a tracking service."""
        if not self.base_url:
            return {}
        return {
            "unsubscribe_url": self.unsubscribe_url(delivery_id),
            "preferences_url": self.preferences_url(delivery_id),
        }

    def _link_ids(self, links: list[tuple[str, int]]) -> dict[str, int]:
        if self._ids_of is not None:
            return self._ids_of(links)
        from mailcast.ledger.events import register_links

        assert self.engine is not None
        key = (str(self.engine.url), self.run_id)
        with _links_lock:
            known = _link_ids.setdefault(key, {})
            missing = [(u, p) for u, p in links if u not in known]
        if missing:
            found = register_links(self.engine, self.run_id, missing)
            with _links_lock:
                known.update(found)
        return {u: known[u] for u, _ in links if u in known}

    def rewrite(self, delivery_id: int, body: str) -> str:
        """An HTML body with its links tracked and the pixel added (as the campaign says)."""
        if self.track_clicks:
            links = tracked_urls(body, base_url=self.base_url)
            if links:
                ids = self._link_ids(links)

                def replacement(url: str, _position: int) -> str | None:
                    link_id = ids.get(url)
                    return None if link_id is None else self.click_url(delivery_id, link_id)

                body = rewrite_links(body, replacement, base_url=self.base_url)
        if self.track_opens:
            body = add_pixel(body, self.pixel_url(delivery_id))
        return body

    def headers(self, delivery_id: int) -> list[tuple[str, str]]:
        """``List-Unsubscribe`` (https and/or mailto) and, for https, ``List-Unsubscribe-Post``
        (RFC 8058 one-click)."""
        if not self.list_unsubscribe:
            return []
        targets = []
        token = tokens.make(self.secret, tokens.UNSUBSCRIBE, delivery_id)
        if self.base_url:
            targets.append(f"<{self.base_url}/u/{token}>")
        if self.unsubscribe_mailto:
            subject = quote(f"unsubscribe {token}")
            targets.append(f"<mailto:{self.unsubscribe_mailto}?subject={subject}>")
        out = [("List-Unsubscribe", ", ".join(targets))]
        if self.base_url:
            out.append(("List-Unsubscribe-Post", ONE_CLICK))
        return out

    def apply(self, delivery_id: int, rendered: Rendered) -> tuple[Rendered, bytes]:
        """The rendered message with tracking applied, and the header lines to put in front of
        the built message (CRLF-terminated bytes; empty when there are none)."""
        if not self.active:
            return rendered, b""
        if rendered.html is not None and (self.track_clicks or self.track_opens):
            rendered = replace(rendered, html=self.rewrite(delivery_id, rendered.html))
        from mailcast.compose.mime import encode_header

        head = b"".join(encode_header(n, v) for n, v in self.headers(delivery_id))
        return rendered, head

    def envelope_sender(self, delivery_id: int) -> str | None:
        """The VERP return path ``bounces+TOKEN@bounce_domain``, or None (use the sender)."""
        if not self.bounce_domain:
            return None
        return tokens.verp_address(self.secret, delivery_id, self.bounce_domain)


def describe(spec: Any) -> str:
    """One line for the CLI: whether and how the campaign is tracked."""
    if not getattr(spec, "tracking_base_url", None):
        return (
            "tracking: off (the campaign has no tracking_base_url: no open pixel, no click"
            " tracking, no List-Unsubscribe link)"
        )
    parts = [
        "opens" if spec.track_opens else None,
        "clicks" if spec.track_clicks else None,
        "one-click unsubscribe",
    ]
    extra = f", VERP return path @{spec.bounce_domain}" if spec.bounce_domain else ""
    return f"tracking: {', '.join(p for p in parts if p)} via {spec.tracking_base_url}{extra}"


def is_tracked(spec: Any) -> bool:
    """Whether a campaign is tracked at all: a tracking service, a VERP bounce domain or an
    unsubscribe mailbox (each needs the tracking secret)."""
    return bool(spec.tracking_base_url or spec.bounce_domain or spec.unsubscribe_mailto)


def check_tracking(spec: Any) -> bool:
    """When the campaign is tracked, the tracking secret must be there (TrackingError before
    the run is planned, not once per chunk); returns whether it is tracked."""
    if is_tracked(spec):
        tokens.load_secret()
        return True
    return False
