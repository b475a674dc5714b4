"""Subscribing with consent on ``mailcast serve``: the proof-of-work challenge (valid, wrong,
expired, reused, tampered), the per-IP rate limit, the honeypot, escaping, single and double
opt-in with their consent records (the confirmation message sent through the run machinery to a
capturing SMTP server), the preference page and the one-click unsubscribe of a list campaign.
The web tests go through the ASGI app (Starlette's test client) on SQLite and Postgres; the end
to end test over real HTTP and SMTP is tests/test_subscribe_e2e.py."""

from __future__ import annotations

import base64
import email
import email.policy
import html
import re
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

with warnings.catch_warnings():  # "install httpx2": the test client works with httpx as it is
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from mailcast.capture import CaptureServer
from mailcast.engagement import tokens
from mailcast.engagement.links import Tracker
from mailcast.errors import AudienceNotFoundError
from mailcast.ledger import audiences
from mailcast.ledger import subscriptions as db
from mailcast.ledger.models import Event, Suppression
from mailcast.ledger.store import Ledger
from mailcast.recipients import Recipient, contacts, lists
from mailcast.web import challenge
from mailcast.web.ratelimit import RateLimiter

SECRET = "subscribe-test-secret-0123456789"
KEY = SECRET.encode()
BITS = 6  # the tests' challenge: cheap to solve


# -- the challenge --------------------------------------------------------------------------------


def test_a_solved_challenge_passes_once() -> None:
    seen = challenge.SeenChallenges()
    text = challenge.issue(KEY, "news", 10, 60)
    counter = challenge.solve(text, 10)
    assert challenge.check(KEY, "news", text, counter, seen) is None
    # used: refused the second time, even with the right work
    assert challenge.check(KEY, "news", text, counter, seen) == challenge.REUSED


def test_a_wrong_counter_is_refused() -> None:
    seen = challenge.SeenChallenges()
    text = challenge.issue(KEY, "news", 16, 60)
    good = int(challenge.solve(text, 16))
    wrong = next(
        str(c) for c in range(good + 1, good + 10_000) if not challenge.work_done(text, str(c), 16)
    )
    for counter in (wrong, "", "-1", "1e3", "x", "9" * 40, " 1"):
        assert challenge.check(KEY, "news", text, counter, seen) == challenge.NO_WORK
    assert challenge.check(KEY, "news", text, str(good), seen) is None  # not used up by those


def test_an_expired_challenge_is_refused() -> None:
    seen = challenge.SeenChallenges()
    text = challenge.issue(KEY, "news", 4, 60, now=time.time() - 120)
    counter = challenge.solve(text, 4)
    assert challenge.check(KEY, "news", text, counter, seen) == challenge.EXPIRED


def test_a_challenge_is_for_its_form_its_secret_and_its_difficulty() -> None:
    seen = challenge.SeenChallenges()
    text = challenge.issue(KEY, "news", 4, 60)
    counter = challenge.solve(text, 4)
    assert challenge.check(KEY, "other list", text, counter, seen) == challenge.FORGED
    assert challenge.check(b"another-secret-0123456789", "news", text, counter, seen) == (
        challenge.FORGED
    )
    # a challenge easier than the server asks for now (an old page, or a forged difficulty)
    assert challenge.check(KEY, "news", text, counter, seen, min_bits=8) == challenge.FORGED
    assert challenge.check(KEY, "news", text, counter, seen) is None


def test_the_work_is_what_the_page_says() -> None:
    text = challenge.issue(KEY, "news", 12, 60)
    counter = challenge.solve(text, 12)
    import hashlib

    digest = hashlib.sha256((text + counter).encode()).digest()
    assert int.from_bytes(digest[:2], "big") >> 4 == 0  # 12 leading zero bits
    assert challenge.leading_zero_bits(b"\x00\x00\x10" + b"\xff" * 29) == 19
    assert challenge.leading_zero_bits(b"\x00" * 32) == 256


def test_used_challenges_are_forgotten_when_expired_and_bounded() -> None:
    seen = challenge.SeenChallenges(limit=3)
    now = time.time()
    made = [challenge.parse(KEY, "f", challenge.issue(KEY, "f", 0, 60)) for _ in range(5)]
    for c in made:
        assert c is not None and seen.use(c, now)
    assert len(seen._seen) <= 3
    late = challenge.parse(KEY, "f", challenge.issue(KEY, "f", 0, 60))
    assert late is not None
    assert seen.use(late, now + 3600) and len(seen._seen) == 1  # the expired ones went


_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_tampered_challenge_is_never_accepted(data: st.DataObject) -> None:
    text = challenge.issue(KEY, "news", 0, 600)
    chars = list(text)
    op = data.draw(st.sampled_from(["replace", "insert", "delete", "bytes", "upper"]))
    if op == "replace":
        i = data.draw(st.integers(0, len(chars) - 1))
        new = data.draw(st.sampled_from(_ALPHABET + "AZ0189-_=."))
        if new == chars[i]:
            return
        chars[i] = new
        tampered = "".join(chars)
    elif op == "insert":
        i = data.draw(st.integers(0, len(chars)))
        chars.insert(i, data.draw(st.sampled_from(_ALPHABET)))
        tampered = "".join(chars)
    elif op == "delete":
        del chars[data.draw(st.integers(0, len(chars) - 1))]
        tampered = "".join(chars)
    elif op == "upper":
        tampered = text.upper()  # the same bytes, another spelling: not the challenge signed
    else:
        raw = bytearray(base64.b32decode(text.upper() + "=" * (-len(text) % 8)))
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))  # e.g. a lower difficulty, a later expiry
        tampered = base64.b32encode(bytes(raw)).decode().rstrip("=").lower()
    assert challenge.parse(KEY, "news", tampered) is None
    # whatever the counter: a tampered challenge does not pass
    assert challenge.check(KEY, "news", tampered, "0", challenge.SeenChallenges()) is not None


@settings(max_examples=200, deadline=None)
@given(
    contact=st.integers(1, 2**63 - 1),
    list_id=st.integers(1, 2**31 - 1),
    flip=st.integers(0, 36),
    xor=st.integers(1, 255),
)
def test_a_tampered_confirmation_token_names_nothing(
    contact: int, list_id: int, flip: int, xor: int
) -> None:
    expires = int(time.time()) + 3600
    token = tokens.make_confirmation(KEY, contact, list_id, expires)
    assert tokens.verify_confirmation(KEY, token, time.time()) == tokens.Confirmation(
        contact, list_id, expires
    )
    raw = bytearray(base64.b32decode(token.upper() + "=" * (-len(token) % 8)))
    raw[flip % len(raw)] ^= xor
    tampered = base64.b32encode(bytes(raw)).decode().rstrip("=").lower()
    assert tokens.verify_confirmation(KEY, tampered, time.time()) is None
    assert tokens.verify_confirmation(KEY, token, expires + 1) is None  # expired
    assert tokens.verify_confirmation(b"another-secret-0123456789", token, time.time()) is None
    assert tokens.verify(KEY, token) is None  # never a tracking token


# -- the rate limit -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_allows_a_burst_then_refills_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(6, 3, clock=clock)  # 6 a minute: one every 10 s, 3 at once
    assert [limiter.take("1.2.3.4") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("1.2.3.4")
    assert 9.9 < wait <= 10.0 and limiter.retry_after(wait) == "10"
    assert limiter.take("5.6.7.8") == 0.0  # another address has its own bucket
    clock.now += 10
    assert limiter.take("1.2.3.4") == 0.0
    assert limiter.take("1.2.3.4") > 0
    clock.now += 3600  # full again: the buckets are forgotten
    assert limiter.take("9.9.9.9") == 0.0 and len(limiter) == 1


def test_the_rate_limit_keeps_memory_bounded_and_can_be_off() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.take(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter) <= 100
    off = RateLimiter(0, 1)
    assert all(off.take("1.1.1.1") == 0.0 for _ in range(100))


# -- the web routes -------------------------------------------------------------------------------


def make_list(url: str, name: str, optin: str = "single", description: str | None = None) -> int:
    return lists.create_list(url, name, optin=optin, description=description).id


def status_of(url: str, address: str, list_name: str) -> str | None:
    try:
        return contacts.get_contact(url, address).lists.get(list_name)
    except AudienceNotFoundError:
        return None


def _exists(url: str, address: str) -> bool:
    try:
        contacts.get_contact(url, address)
    except AudienceNotFoundError:
        return False
    return True


def consent(url: str, address: str) -> list[dict[str, Any]]:
    contact = contacts.get_contact(url, address)
    with Ledger(url).engine.connect() as conn:
        return [dict(r) for r in audiences.consent_records_of(conn, contact.id)]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    monkeypatch.setenv("MAILCAST_SUBSCRIBE_CHALLENGE_BITS", str(BITS))
    monkeypatch.setenv("MAILCAST_SUBSCRIBE_RATE_PER_MINUTE", "0")  # on in its own test


@pytest.fixture
def ledger_url(db_url: str) -> str:
    Ledger(db_url)
    return db_url


@pytest.fixture
def client(env: None, ledger_url: str) -> Iterator[TestClient]:
    from mailcast.web.tracking import create_app

    with TestClient(create_app(ledger_url)) as c:
        yield c


def uid() -> str:
    return uuid.uuid4().hex[:8]


def form_fields(page: str) -> dict[str, str]:
    text = re.search(r'name="challenge" value="([a-z2-7]+)"', page)
    assert text is not None
    bits = re.search(r'data-bits="(\d+)"', page)
    assert bits is not None and int(bits.group(1)) == BITS
    return {"challenge": text.group(1), "pow": challenge.solve(text.group(1), BITS)}


def post(client: TestClient, list_name: str, **fields: str) -> Any:
    page = client.get(f"/s/{list_name}")
    assert page.status_code == 200
    data = {"consent": "yes", "website": "", **form_fields(page.text), **fields}
    return client.post(f"/s/{list_name}", data=data)


def test_the_form_is_plain_html_with_a_challenge_a_honeypot_and_consent(
    client: TestClient, ledger_url: str
) -> None:
    name = f"news-{uid()}"
    make_list(ledger_url, name, description="Tips & <tricks>")
    r = client.get(f"/s/{name}")
    assert r.status_code == 200
    page = r.text
    assert '<form id="subscribe" method="post" action=""' in page
    assert 'type="email" id="email" name="email" required' in page
    assert f"Yes, send me email from {name}." in page
    assert 'type="checkbox" name="consent" value="yes" required' in page
    assert "Tips &amp; &lt;tricks&gt;" in page
    # the honeypot: hidden with CSS, out of the tab order
    assert re.search(
        r'<div class="hp" aria-hidden="true">.*name="website" tabindex="-1"', page, re.S
    )
    assert ".hp { position: absolute; left: -10000px" in page
    # the script is the only one allowed (its hash), forms post only here
    csp = r.headers["content-security-policy"]
    assert challenge.script_hash() in csp and "form-action 'self'" in csp
    assert challenge.SCRIPT in page and "<noscript>" in page
    text = re.search(r'name="challenge" value="([a-z2-7]+)"', page)
    assert text is not None and challenge.parse(KEY, name, text.group(1)) is not None
    assert client.get(f"/s/no-such-list-{uid()}").status_code == 404
    assert client.post(f"/s/no-such-list-{uid()}", data={"email": "a@b.example"}).status_code == 404


def test_single_opt_in_confirms_at_once_with_a_consent_record(
    client: TestClient, ledger_url: str
) -> None:
    name = f"news-{uid()}"
    list_id = make_list(ledger_url, name)
    address = f"Ann.{uid()}@Example.COM"
    r = post(client, name, email=address, name="Ann")
    assert r.status_code == 200 and "You are subscribed" in r.text
    assert address not in r.text and "A…@example.com" in r.text  # never in full
    contact = contacts.get_contact(ledger_url, address)
    assert contact.name == "Ann" and contact.lists == {name: "confirmed"}
    assert contact.address == address.split("@")[0] + "@example.com"  # validated, normalized
    assert list_id == lists.get_list(ledger_url, name).id
    (record,) = consent(ledger_url, address)
    assert record["action"] == "subscribe" and record["method"] == "form"
    assert record["list"] == name and record["source"] == "testclient"  # the client IP
    assert record["consent_text"] == f"Yes, send me email from {name}. I can unsubscribe at any time with the link in each message."  # fmt: skip


def test_bots_are_refused_and_nothing_is_recorded(client: TestClient, ledger_url: str) -> None:
    name = f"news-{uid()}"
    make_list(ledger_url, name)
    address = f"bot-{uid()}@example.com"
    # the honeypot filled in
    r = post(client, name, email=address, website="https://spam.example")
    assert r.status_code == 400 and "Refused" in r.text
    # no work done, a forged challenge, a reused one, an expired one
    page = client.get(f"/s/{name}").text
    fields = form_fields(page)
    base = {"email": address, "consent": "yes"}
    assert client.post(f"/s/{name}", data={**base, **fields, "pow": ""}).status_code == 400
    forged = challenge.issue(b"not-the-servers-secret-0123", name, BITS, 600)
    r = client.post(
        f"/s/{name}", data={**base, "challenge": forged, "pow": challenge.solve(forged, BITS)}
    )
    assert r.status_code == 400 and "Refused" in r.text
    easy = challenge.issue(KEY, name, 0, 600)  # genuine, but easier than the server asks
    assert (
        client.post(f"/s/{name}", data={**base, "challenge": easy, "pow": "0"}).status_code == 400
    )
    assert not _exists(ledger_url, address)
    # the one good post goes through; its challenge cannot be used again
    assert client.post(f"/s/{name}", data={**base, **fields}).status_code == 200
    other = f"bot2-{uid()}@example.com"
    r = client.post(f"/s/{name}", data={**base, **fields, "email": other})
    assert r.status_code == 400 and not _exists(ledger_url, other)
    old = challenge.issue(KEY, name, BITS, 60, now=time.time() - 600)
    r = client.post(
        f"/s/{name}",
        data={**base, "email": other, "challenge": old, "pow": challenge.solve(old, BITS)},
    )
    assert r.status_code == 400 and "The form expired" in r.text  # shown again, to resubmit
    assert not _exists(ledger_url, other)
    # not a form at all
    r = client.post(f"/s/{name}", content=b'{"email": "x@example.com"}')
    assert r.status_code == 400
    r = client.post(
        f"/s/{name}",
        content=b"email=" + b"a" * 20_000,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400


def test_what_a_person_typed_is_escaped_when_the_form_comes_back(
    client: TestClient, ledger_url: str
) -> None:
    name = f"news-{uid()}"
    make_list(ledger_url, name)
    evil = '"><script>alert(1)</script>'
    r = post(client, name, email=f"x{evil}@example.com", name=f"<img src=x onerror=alert(2)>{evil}")
    assert r.status_code == 400 and "This address cannot be used: invalid address" in r.text
    assert "<script>alert" not in r.text and "<img src=x" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "&lt;img src=x onerror=alert(2)&gt;" in r.text
    # consent not given: the form again, nothing recorded
    address = f"c-{uid()}@example.com"
    r = post(client, name, email=address, consent="")
    assert r.status_code == 400 and "Please tick the box" in r.text
    assert not _exists(ledger_url, address)


def test_posts_are_rate_limited_per_address(
    env: None, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.web.tracking import create_app

    monkeypatch.setenv("MAILCAST_SUBSCRIBE_BURST", "2")
    monkeypatch.setenv("MAILCAST_SUBSCRIBE_RATE_PER_MINUTE", "1")
    name = f"news-{uid()}"
    make_list(ledger_url, name)
    with TestClient(create_app(ledger_url)) as client:
        assert post(client, name, email=f"a-{uid()}@example.com").status_code == 200
        assert post(client, name, email=f"b-{uid()}@example.com").status_code == 200
        address = f"c-{uid()}@example.com"
        r = post(client, name, email=address)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert not _exists(ledger_url, address)
        # the form itself is still served
        assert client.get(f"/s/{name}").status_code == 200


def test_double_opt_in_sends_a_confirmation_through_the_run_machinery(
    env: None, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.web.tracking import create_app

    name = f"weekly {uid()}"  # a name that needs quoting in a URL
    list_id = make_list(ledger_url, name, optin="double")
    other_id = make_list(ledger_url, f"other-{uid()}", optin="double")
    address = f"bob-{uid()}@example.com"
    ledger = Ledger(ledger_url)
    with CaptureServer() as smtp:
        monkeypatch.setenv("MAILCAST_TRANSPORT_URL", smtp.url)
        monkeypatch.setenv("MAILCAST_PUBLIC_URL", "https://t.acme.example/")
        monkeypatch.setenv("MAILCAST_SUBSCRIBE_SENDER", "Acme News <news@acme.example>")
        with TestClient(create_app(ledger_url)) as client:
            r = post(client, name, email=address)
            assert r.status_code == 200 and "Check your inbox" in r.text
            (captured,) = smtp.wait_for(1, timeout=20)
            contact = contacts.get_contact(ledger_url, address)
            assert contact.lists == {name: "unconfirmed"}
            msg = email.message_from_bytes(captured.data, policy=email.policy.default)
            assert list(captured.rcpt_tos) == [address]
            assert msg["Subject"] == f"Please confirm your subscription to {name}"
            assert msg["From"] == "Acme News <news@acme.example>"
            text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            link = re.search(r"https://t\.acme\.example(/s/\S+)", text)
            assert link is not None and link.group(1).startswith(f"/s/weekly%20{name[7:]}/confirm/")
            html_part = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
            assert f'href="https://t.acme.example{link.group(1)}"' in html_part
            # the run of confirm:LIST: one row, sent
            (run,) = [r for r in ledger.runs() if r.campaign == f"confirm:{name}"]
            assert run.status == "completed" and not run.dry_run
            assert ledger.counts(run.id)["sent"] == 1
            # a forged or another list's link does nothing
            token = link.group(1).rsplit("/", 1)[1]
            forged = token[:-2] + ("aa" if token[-2:] != "aa" else "bb")
            assert client.get(link.group(1).replace(token, forged)).status_code == 404
            other = tokens.make_confirmation(KEY, contact.id, other_id, int(time.time()) + 60)
            assert client.get(f"/s/{name}/confirm/{other}").status_code == 404
            expired = tokens.make_confirmation(KEY, contact.id, list_id, int(time.time()) - 1)
            r = client.get(f"/s/{name}/confirm/{expired}")
            assert r.status_code == 404 and "has expired" in r.text
            assert status_of(ledger_url, address, name) == "unconfirmed"
            # the link confirms, once
            r = client.get(link.group(1))
            assert r.status_code == 200 and "Subscription confirmed" in r.text
            assert client.get(link.group(1)).status_code == 200
            assert status_of(ledger_url, address, name) == "confirmed"
            records = consent(ledger_url, address)
            assert [(c["action"], c["method"], c["list"]) for c in records] == [
                ("subscribe", "form", name),
                ("confirm", "confirmation", name),
            ]
            # subscribing again when confirmed: no second message, still confirmed
            assert post(client, name, email=address).status_code == 200
            time.sleep(0.5)
            assert len(smtp.messages) == 1
            # the form posted twice for a new address: one confirmation (the first link works)
            twice = f"carl-{uid()}@example.com"
            assert post(client, name, email=twice).status_code == 200
            assert post(client, name, email=twice).status_code == 200
            time.sleep(0.5)
            assert [m.rcpt_tos[0] for m in smtp.messages[1:]] == [twice]
            assert len(consent(ledger_url, twice)) == 2  # both posts are recorded
            assert status_of(ledger_url, address, name) == "confirmed"


def test_a_confirmation_that_cannot_be_sent_ends_failed(
    env: None, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.web.tracking import create_app

    name = f"double-{uid()}"
    make_list(ledger_url, name, optin="double")
    ledger = Ledger(ledger_url)
    # a server that requires a login we do not have: the send stops at once
    with CaptureServer(username="user", password="secret-pass") as smtp:
        monkeypatch.setenv("MAILCAST_TRANSPORT_URL", smtp.url)
        monkeypatch.setenv("MAILCAST_PUBLIC_URL", "https://t.acme.example")
        monkeypatch.setenv("MAILCAST_SUBSCRIBE_SENDER", "news@acme.example")
        with TestClient(create_app(ledger_url)) as client:
            assert post(client, name, email=f"c-{uid()}@example.com").status_code == 200
    (run,) = [r for r in ledger.runs() if r.campaign == f"confirm:{name}"]
    (row,) = list(ledger.deliveries(run.id))
    assert row["status"] == "failed" and row["reason"].startswith("temporary failure: not sent")
    assert ledger.run(run.id).status == "completed"


def test_double_opt_in_without_its_settings_is_refused_before_anything_is_recorded(
    client: TestClient, ledger_url: str
) -> None:
    name = f"double-{uid()}"
    make_list(ledger_url, name, optin="double")
    address = f"d-{uid()}@example.com"
    r = post(client, name, email=address)
    assert r.status_code == 503
    assert not _exists(ledger_url, address)


# -- list campaigns: the preference page and one-click unsubscribe --------------------------------


def list_delivery(url: str, list_name: str | None, address: str) -> int:
    """A sent delivery of a campaign to ``list_name`` (None: a file campaign)."""
    ledger = Ledger(url)
    recipients: dict[str, Any] = {"list": list_name} if list_name else {"path": "people.csv"}
    run_id = ledger.create_run(
        f"campaign-{uid()}", {"recipients": recipients}, dry_run=False, transport=None
    )
    ledger.plan(run_id, [Recipient(2, address, {}, key=address.lower())], ["email"])
    (delivery_id,) = ledger.all_pending_ids(run_id)
    return int(delivery_id)


def subscribed(url: str, address: str, *list_names: str) -> None:
    for name in list_names:
        contacts.subscribe(url, address, name, method="cli", source="test")


def test_the_preference_page_lists_the_lists_to_stay_on_or_leave(
    client: TestClient, ledger_url: str
) -> None:
    a, b = f"news-{uid()}", f"offers <{uid()}>"
    a_id, b_id = make_list(ledger_url, a), make_list(ledger_url, b, description="<i>deals</i>")
    address = f"pat-{uid()}@example.com"
    subscribed(ledger_url, address, a, b)
    delivery = list_delivery(ledger_url, a, address)
    token = tokens.make(KEY, tokens.PREFERENCES, delivery)
    r = client.get(f"/p/{token}")
    assert r.status_code == 200 and "p…@example.com" in r.text and address not in r.text
    assert f'name="stay" value="{a_id}" checked' in r.text
    assert f'name="stay" value="{b_id}" checked' in r.text
    assert "offers &lt;" in r.text and "&lt;i&gt;deals&lt;/i&gt;" in r.text
    assert "Unsubscribe from everything" in r.text
    # leave b, stay on a
    r = client.post(f"/p/{token}", data={"sent": "1", "stay": str(a_id)})
    assert r.status_code == 200 and "You left <b>offers &lt;" in r.text
    assert contacts.get_contact(ledger_url, address).lists == {a: "confirmed", b: "unsubscribed"}
    (record,) = [c for c in consent(ledger_url, address) if c["action"] == "unsubscribe"]
    assert record["method"] == "preferences" and record["list"] == b
    # a tampered or other-kind token names nothing
    assert client.get(f"/p/{tokens.make(KEY, tokens.UNSUBSCRIBE, delivery)}").status_code == 404
    assert client.get(f"/p/{token[:-1]}").status_code == 404
    # an address that is no contact (a file campaign's recipient)
    stranger = list_delivery(ledger_url, None, f"s-{uid()}@example.com")
    r = client.get(f"/p/{tokens.make(KEY, tokens.PREFERENCES, stranger)}")
    assert r.status_code == 200 and "on none of our lists" in r.text


def test_one_click_unsubscribe_of_a_list_campaign_leaves_that_list_only(
    client: TestClient, ledger_url: str
) -> None:
    a, b = f"news-{uid()}", f"offers-{uid()}"
    make_list(ledger_url, a), make_list(ledger_url, b)
    address = f"lee-{uid()}@example.com"
    subscribed(ledger_url, address, a, b)
    delivery = list_delivery(ledger_url, a, address)
    token = tokens.make(KEY, tokens.UNSUBSCRIBE, delivery)
    r = client.get(f"/u/{token}")  # the page (a link scanner's GET changes nothing)
    assert r.status_code == 200 and f"from the list <b>{a}</b>?" in r.text
    assert contacts.get_contact(ledger_url, address).lists == {a: "confirmed", b: "confirmed"}
    r = client.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and f"no more email from the list <b>{a}</b>" in r.text
    engine = Ledger(ledger_url).engine
    assert contacts.get_contact(ledger_url, address).lists == {a: "unsubscribed", b: "confirmed"}
    (record,) = [c for c in consent(ledger_url, address) if c["action"] == "unsubscribe"]
    assert record["method"] == "one_click" and record["source"] == "one-click"
    with engine.connect() as conn:
        suppressed = conn.execute(
            select(func.count()).where(Suppression.__table__.c.address_key == address)
        ).scalar_one()
        events = conn.execute(
            select(func.count()).where(
                Event.__table__.c.delivery_id == delivery, Event.__table__.c.kind == "unsubscribe"
            )
        ).scalar_one()
    assert suppressed == 0 and events == 1
    # a file campaign's one-click still suppresses the address for every campaign
    other = f"fay-{uid()}@example.com"
    subscribed(ledger_url, other, b)
    file_delivery = list_delivery(ledger_url, None, other)
    r = client.post(
        f"/u/{tokens.make(KEY, tokens.UNSUBSCRIBE, file_delivery)}",
        data={"List-Unsubscribe": "One-Click", "source": "page"},  # the page's button
    )
    assert r.status_code == 200 and "no more email from us" in r.text
    assert db.suppressed_reason(engine, other) == "unsubscribed"
    with engine.connect() as conn:
        assert audiences.suppression_of(conn, other)["source"] == "unsubscribe page"  # type: ignore[index]
    assert contacts.get_contact(ledger_url, other).lists == {b: "confirmed"}  # lists untouched


def test_messages_get_a_preferences_url() -> None:
    tracker = Tracker(run_id="r", engine=None, secret=KEY, base_url="https://t.acme.example")
    context = tracker.context(42)
    assert context["preferences_url"] == (
        f"https://t.acme.example/p/{tokens.make(KEY, tokens.PREFERENCES, 42)}"
    )
    assert tokens.verify(KEY, context["preferences_url"].rsplit("/", 1)[1]) == tokens.Token(
        tokens.PREFERENCES, 42, None
    )
    assert Tracker(run_id="r", engine=None, secret=KEY).context(42) == {}


def test_confirmation_runs_a_stopped_service_left_open_are_closed_when_it_starts(
    env: None, ledger_url: str
) -> None:
    from datetime import timedelta

    from mailcast.engagement.confirmation import CAMPAIGN_PREFIX
    from mailcast.ledger.models import utcnow
    from mailcast.web.tracking import create_app

    ledger = Ledger(ledger_url)
    runs = {}
    for age in (3600, 5):  # one left by a stopped service, one being sent right now
        run_id = ledger.create_run(
            f"{CAMPAIGN_PREFIX}news-{uid()}", {}, dry_run=False, transport=None
        )
        address = f"g-{uid()}@example.com"
        ledger.plan(run_id, [Recipient(1, address, {}, key=address)], ["email"])
        ledger.set_run(run_id, status="sending", created_at=utcnow() - timedelta(seconds=age))
        runs[age] = run_id
    with TestClient(create_app(ledger_url)) as client:
        assert client.get("/healthz").text == "ok"
    old, fresh = runs[3600], runs[5]
    assert ledger.run(old).status == "completed"
    (row,) = list(ledger.deliveries(old))
    assert row["status"] == "failed"
    assert row["reason"] == "temporary failure: not sent: the service stopped while sending"
    assert ledger.run(fresh).status == "sending"  # not this one: it may be on its way


@settings(max_examples=40, deadline=None)
@given(
    typed=st.text(
        alphabet=st.sampled_from([*"<>\"'&/= abcxyz@.;:()", "\u00e9", "\u202e"]),
        min_size=1,
        max_size=40,
    ).filter(lambda t: "<" in t or '"' in t or "&" in t)
)
def test_nothing_typed_comes_back_unescaped(
    escape_client: tuple[TestClient, str], typed: str
) -> None:
    client, name = escape_client
    r = post(client, name, email=f"{typed}@@example.com", name=typed)
    assert r.status_code == 400
    # what was typed comes back only as the inputs' values, every <, >, ", ' and & an entity
    shown = re.search(r'id="name" name="name"[^>]*\n value="([^"]*)">', r.text)
    assert shown is not None and shown.group(1) == html.escape(typed.strip(), quote=True)
    shown = re.search(r'id="email" name="email"[^>]*\n value="([^"]*)">', r.text)
    assert shown is not None
    assert shown.group(1) == html.escape(f"{typed}@@example.com".strip(), quote=True)


@pytest.fixture(scope="module")
def escape_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    from mailcast.web.tracking import create_app

    url = f"sqlite:///{tmp_path_factory.mktemp('escape') / 'ledger.sqlite3'}"
    Ledger(url)
    make_list(url, "escaping")
    mp = pytest.MonkeyPatch()
    mp.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    mp.setenv("MAILCAST_SUBSCRIBE_CHALLENGE_BITS", str(BITS))
    mp.setenv("MAILCAST_SUBSCRIBE_RATE_PER_MINUTE", "0")
    try:
        with TestClient(create_app(url)) as client:
            yield client, "escaping"
    finally:
        mp.undo()
