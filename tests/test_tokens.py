"""Tracking tokens and the service's refusals: forged, altered, truncated, other-kind and
replayed-for-another-recipient tokens name no delivery (404, nothing recorded), and ``/c/`` can
only redirect to a URL stored for the delivery's own run, whatever the request says."""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from mailcast.engagement import tokens
from mailcast.engagement.links import Tracker
from mailcast.engagement.tokens import BOUNCE, CLICK, OPEN, UNSUBSCRIBE
from mailcast.ledger import events
from mailcast.ledger.models import Event, Suppression
from mailcast.ledger.store import Ledger, Outcome
from mailcast.recipients import Recipient
from mailcast.web.tracking import PIXEL, create_app
from tests.ledger_rows import claim_pending

SECRET = b"test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-0123456789abcdef"


def _raw(token: str) -> bytes:
    text_ = token.upper()
    return base64.b32decode(text_ + "=" * (-len(text_) % 8))


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


# -- the tokens themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [OPEN, UNSUBSCRIBE, BOUNCE])
def test_a_token_names_its_delivery_and_kind_only(kind: str) -> None:
    token = tokens.make(SECRET, kind, 123_456_789)
    assert tokens.verify(SECRET, token) == tokens.Token(kind, 123_456_789, None)
    assert tokens.verify(SECRET, token, kind) is not None
    others = {OPEN, CLICK, UNSUBSCRIBE, BOUNCE} - {kind}
    assert all(tokens.verify(SECRET, token, k) is None for k in others)
    assert set(token) <= set("abcdefghijklmnopqrstuvwxyz234567")
    assert "123456789" not in token


def test_a_click_token_names_its_link() -> None:
    token = tokens.make(SECRET, CLICK, 7, 42)
    assert tokens.verify(SECRET, token, CLICK) == tokens.Token(CLICK, 7, 42)
    with pytest.raises(ValueError):
        tokens.make(SECRET, CLICK, 7)
    with pytest.raises(ValueError):
        tokens.make(SECRET, OPEN, 7, 42)


def test_forged_tokens_are_refused() -> None:
    genuine = tokens.make(SECRET, OPEN, 5)
    assert tokens.verify(OTHER_SECRET, genuine) is None  # signed with another secret
    forged = tokens.make(OTHER_SECRET, OPEN, 5)
    assert tokens.verify(SECRET, forged) is None
    for _ in range(200):  # random bytes of the right shape
        raw = bytes((1,)) + b"o" + struct.pack(">Q", 5) + secrets.token_bytes(16)
        assert tokens.verify(SECRET, _encode(raw)) is None
    for junk in ("", "x", "not-a-token", "../../etc/passwd", "%00", "é" * 42, "a" * 500):
        assert tokens.verify(SECRET, junk) is None


def test_truncated_and_extended_tokens_are_refused() -> None:
    for kind, link in ((OPEN, None), (CLICK, 9)):
        token = tokens.make(SECRET, kind, 77, link)
        for n in range(len(token)):
            assert tokens.verify(SECRET, token[:n]) is None, n
        for extra in ("a", "aa", "q", "7", "====", "aaaaaaaa"):
            assert tokens.verify(SECRET, token + extra) is None, extra


def test_a_token_replayed_for_another_recipient_is_refused() -> None:
    """Splicing another delivery id (or link id) into a genuine token breaks its signature."""
    alice, bob = 1001, 1002
    raw = _raw(tokens.make(SECRET, UNSUBSCRIBE, alice))
    spliced = raw[:2] + struct.pack(">Q", bob) + raw[10:]
    assert tokens.verify(SECRET, _encode(spliced)) is None
    raw = _raw(tokens.make(SECRET, CLICK, alice, 3))
    assert tokens.verify(SECRET, _encode(raw[:2] + struct.pack(">Q", bob) + raw[10:])) is None
    assert tokens.verify(SECRET, _encode(raw[:10] + struct.pack(">Q", 4) + raw[18:])) is None
    # another kind with the same id and MAC
    raw = _raw(tokens.make(SECRET, OPEN, alice))
    assert tokens.verify(SECRET, _encode(raw[:1] + b"u" + raw[2:])) is None


def test_a_short_or_missing_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(tokens.TrackingError) as exc:
        tokens.load_secret()
    assert "MAILCAST_TRACKING_SECRET" in str(exc.value) and exc.value.hint
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", "short")
    with pytest.raises(tokens.TrackingError):
        tokens.load_secret()
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", "long-enough-secret-value")
    assert tokens.load_secret() == b"long-enough-secret-value"


_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from([OPEN, CLICK, UNSUBSCRIBE, BOUNCE]),
    delivery=st.integers(min_value=1, max_value=2**63 - 1),
    link=st.integers(min_value=1, max_value=2**63 - 1),
    data=st.data(),
)
def test_any_tampering_is_detected(kind: str, delivery: int, link: int, data: Any) -> None:
    token = tokens.make(SECRET, kind, delivery, link if kind == CLICK else None)
    chars = list(token)
    op = data.draw(st.sampled_from(["replace", "insert", "delete", "swap", "bytes"]))
    if op == "replace":
        i = data.draw(st.integers(0, len(chars) - 1))
        chars[i] = data.draw(st.sampled_from(_ALPHABET + "AZ0189-_=."))
    elif op == "insert":
        i = data.draw(st.integers(0, len(chars)))
        chars.insert(i, data.draw(st.sampled_from(_ALPHABET)))
    elif op == "delete":
        del chars[data.draw(st.integers(0, len(chars) - 1))]
    elif op == "swap":
        i = data.draw(st.integers(0, len(chars) - 2))
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    else:  # flip bits of the decoded bytes and re-encode
        raw = bytearray(_raw(token))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
        chars = list(_encode(bytes(raw)))
    tampered = "".join(chars)
    if tampered.lower() == token:  # no change (or only letter case: the same token)
        assert tokens.verify(SECRET, tampered) is not None
    else:
        assert tokens.verify(SECRET, tampered) is None, (token, tampered)


# -- the service --------------------------------------------------------------------------------


class World:
    """A ledger with two runs: run A (alice, bob) and run B (carol), each with its links."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ledger = Ledger(url)
        tag = secrets.token_hex(4)  # the Postgres ledger is shared by the session's tests
        self.domain = f"{tag}.example.com"
        self.run_a = self._run("tokens-a", [f"alice@{self.domain}", f"bob@{self.domain}"])
        self.run_b = self._run("tokens-b", [f"carol@{self.domain}"])
        self.links_a = events.register_links(
            self.ledger.engine, self.run_a, [("https://shop.example/a?x=1&y=2", 1)]
        )
        self.links_b = events.register_links(
            self.ledger.engine, self.run_b, [("https://elsewhere.example/b", 1)]
        )
        ids = self.ids
        self.alice, self.bob = ids[f"alice@{self.domain}"], ids[f"bob@{self.domain}"]
        self.carol = ids[f"carol@{self.domain}"]

    def _run(self, name: str, addresses: list[str]) -> str:
        run_id = self.ledger.create_run(
            f"{name}-{secrets.token_hex(3)}", {}, dry_run=False, transport=None
        )
        self.ledger.plan(
            run_id,
            [Recipient(i + 2, a, {"email": a}, None, a) for i, a in enumerate(addresses)],
        )
        claims = claim_pending(self.ledger, run_id, 100)
        self.ledger.record([Outcome(c.id, "sent", smtp_code=250) for c in claims])
        return run_id

    @property
    def ids(self) -> dict[str, int]:
        with self.ledger.engine.connect() as conn:
            rows = conn.execute(
                text("SELECT address, id FROM deliveries WHERE run_id IN (:a, :b)"),
                {"a": self.run_a, "b": getattr(self, "run_b", "")},
            ).all()
        return {a: i for a, i in rows}

    def events(self, kind: str | None = None) -> int:
        E = Event.__table__
        query = select(func.count()).select_from(E).where(E.c.run_id.in_([self.run_a, self.run_b]))
        if kind:
            query = query.where(E.c.kind == kind)
        with self.ledger.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def suppressed(self) -> set[str]:
        S = Suppression.__table__
        with self.ledger.engine.connect() as conn:
            keys = conn.execute(
                select(S.c.address_key).where(S.c.address_key.like(f"%@{self.domain}"))
            )
            return set(keys.scalars())


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    yield World(db_url)


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request to the app, then the wait for its event queue: opens and clicks are written
    by the writer thread within a second of the answer."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            return await client.request(method, path, **kwargs)

    response = asyncio.run(go())
    assert app.state.service.writer.flush()
    return response


def test_click_redirects_only_to_the_url_stored_for_the_deliverys_run(world: World) -> None:
    app = create_app(world.url, secret=SECRET)
    link_a = world.links_a["https://shop.example/a?x=1&y=2"]
    link_b = world.links_b["https://elsewhere.example/b"]
    good = tokens.make(SECRET, CLICK, world.alice, link_a)

    # the request cannot steer the redirect: query, fragment-ish and extra path are ignored
    for path in (f"/c/{good}", f"/c/{good}?url=https://evil.example/", f"/c/{good}?next=//evil"):
        r = call(app, "GET", path)
        assert r.status_code == 302, path
        assert r.headers["location"] == "https://shop.example/a?x=1&y=2"
    assert call(app, "GET", f"/c/{good}/https://evil.example/").status_code == 404
    assert world.events(CLICK) == 3

    # a genuinely signed token naming a link of *another* run (as if minted by mistake): refused
    cross = tokens.make(SECRET, CLICK, world.alice, link_b)
    assert call(app, "GET", f"/c/{cross}").status_code == 404
    # a link id that does not exist
    assert (
        call(app, "GET", f"/c/{tokens.make(SECRET, CLICK, world.alice, 10**9)}").status_code == 404
    )
    # a click token with another recipient's id spliced in
    raw = _raw(good)
    spliced = _encode(raw[:2] + struct.pack(">Q", world.bob) + raw[10:])
    assert call(app, "GET", f"/c/{spliced}").status_code == 404
    # forged with another secret, truncated, other kind
    assert (
        call(app, "GET", f"/c/{tokens.make(OTHER_SECRET, CLICK, world.alice, link_a)}").status_code
        == 404
    )
    assert call(app, "GET", f"/c/{good[:-3]}").status_code == 404
    assert call(app, "GET", f"/c/{tokens.make(SECRET, OPEN, world.alice)}").status_code == 404
    assert world.events(CLICK) == 3  # none of the refused requests recorded anything


def test_pixel_unsubscribe_and_refusals_record_exactly_what_they_should(world: World) -> None:
    app = create_app(world.url, secret=SECRET)
    opened = tokens.make(SECRET, OPEN, world.bob)
    r = call(app, "GET", f"/o/{opened}.gif", headers={"User-Agent": "Mail/1.0"})
    assert r.status_code == 200 and r.content == PIXEL
    assert r.headers["content-type"] == "image/gif" and "no-store" in r.headers["cache-control"]
    assert call(app, "GET", f"/o/{opened}.gif").status_code == 200
    assert call(app, "HEAD", f"/o/{opened}.gif").status_code == 200  # no open recorded
    assert world.events(OPEN) == 2

    unsub_bob = tokens.make(SECRET, UNSUBSCRIBE, world.bob)
    for bad in (tokens.make(OTHER_SECRET, OPEN, world.bob), opened[:-1], unsub_bob, "nonsense"):
        assert call(app, "GET", f"/o/{bad}.gif").status_code == 404
    for bad in (tokens.make(OTHER_SECRET, UNSUBSCRIBE, world.bob), unsub_bob[:-2], opened):
        assert call(app, "GET", f"/u/{bad}").status_code == 404
        post = call(app, "POST", f"/u/{bad}", content=b"List-Unsubscribe=One-Click")
        assert post.status_code == 404
    assert world.events() == 2 and world.suppressed() == set()

    unsub = tokens.make(SECRET, UNSUBSCRIBE, world.alice)
    page = call(app, "GET", f"/u/{unsub}")
    assert page.status_code == 200 and "<form" in page.text and 'method="post"' in page.text
    assert f"alice@{world.domain}" not in page.text and f"a…@{world.domain}" in page.text
    assert world.events(UNSUBSCRIBE) == 0 and world.suppressed() == set()  # a GET changes nothing

    # the bob token replayed with alice's id: refused
    raw = _raw(tokens.make(SECRET, UNSUBSCRIBE, world.bob))
    spliced = _encode(raw[:2] + struct.pack(">Q", world.alice) + raw[10:])
    assert (
        call(app, "POST", f"/u/{spliced}", content=b"List-Unsubscribe=One-Click").status_code == 404
    )
    assert world.suppressed() == set()

    one_click = {"content-type": "application/x-www-form-urlencoded"}
    for _ in range(2):  # RFC 8058 one-click, posted twice: recorded once
        r = call(
            app, "POST", f"/u/{unsub}", content=b"List-Unsubscribe=One-Click", headers=one_click
        )
        assert r.status_code == 200 and "unsubscribed" in r.text
    assert world.events(UNSUBSCRIBE) == 1
    assert world.suppressed() == {f"alice@{world.domain}"}
    assert call(app, "GET", "/healthz").text == "ok"


def test_a_recording_failure_still_returns_the_pixel(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(world.url, secret=SECRET)

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("database is on fire")

    monkeypatch.setattr(events, "record_event_batch", broken)  # the batch, then one by one
    monkeypatch.setattr(events, "record_event", broken)
    with caplog.at_level(logging.ERROR, logger="mailcast.engagement"):
        r = call(app, "GET", f"/o/{tokens.make(SECRET, OPEN, world.bob)}.gif")
    assert r.status_code == 200 and r.content == PIXEL
    assert "could not record the open event" in caplog.text
    assert world.events() == 0


def test_the_tracker_rewrites_only_trackable_links_and_the_service_follows_them(
    world: World,
) -> None:
    from mailcast.compose.templates import Rendered

    tracker = Tracker(
        run_id=world.run_a, engine=world.ledger.engine, secret=SECRET,
        base_url="https://t.example", unsubscribe_mailto="unsub@example.com",
    )  # fmt: skip
    body = (
        "<html><body>\n"
        '<a href="https://shop.example/a?x=1&amp;y=2">shop</a>\n'
        "<a data-notrack href='https://private.example/'>private</a>\n"
        '<A HREF="https://shop.example/a?x=1&amp;y=2" class=x>again</A>\n'
        '<a href="mailto:help@example.com">mail</a> <a href="tel:+331234">call</a>\n'
        '<a href="#top">top</a> <a href="/relative">rel</a>\n'
        '<!-- <a href="https://commented.example/">no</a> -->\n'
        '<a title="href=https://fake.example/" href=https://bare.example/p>bare</a>\n'
        '<a href="https://t.example/u/whatever">unsubscribe</a>\n'
        "</BODY></html>"
    )
    rendered = Rendered(to_name=None, subject="s", html=body, text="t", headers={})
    out, head = tracker.apply(world.alice, rendered)
    assert out.html is not None and out.text == "t"
    html_ = out.html
    assert html_.count("https://t.example/c/") == 3
    for kept in (
        "https://private.example/", "mailto:help@example.com", "tel:+331234", 'href="#top"',
        'href="/relative"', "https://commented.example/", 'title="href=https://fake.example/"',
        "https://t.example/u/whatever",
    ):  # fmt: skip
        assert kept in html_, kept
    assert "shop.example" not in html_ and "bare.example" not in html_
    assert html_.index('<img src="https://t.example/o/') < html_.index("</BODY>")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("List-Unsubscribe: <https://t.example/u/")
    assert "<mailto:unsub@example.com?subject=unsubscribe%20" in head.decode().replace("\r\n ", " ")
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in lines

    app = create_app(world.url, secret=SECRET)
    import re

    targets = []
    for href in re.findall(r'href="https://t\.example(/c/[a-z2-7]+)"', html_, re.I):
        r = call(app, "GET", href)
        assert r.status_code == 302
        targets.append(r.headers["location"])
    assert targets == [
        "https://shop.example/a?x=1&y=2", "https://shop.example/a?x=1&y=2",
        "https://bare.example/p",
    ]  # fmt: skip

    off = Tracker(run_id=world.run_a, engine=world.ledger.engine, secret=None)
    assert off.apply(world.alice, rendered) == (rendered, b"")
    assert off.context(world.alice) == {} and off.envelope_sender(world.alice) is None
