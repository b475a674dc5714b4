"""Provider event webhooks on ``mailcast serve`` (SendGrid, Mailgun, Mailjet; SES in
test_webhooks_ses.py), over real HTTP against the app under uvicorn on 127.0.0.1, on SQLite and
Postgres: posts signed exactly as each provider documents become events on the right delivery
(by the provider's message id, else mailcast's Message-ID) and suppress like DSNs do; the same
event posted twice is recorded once; forged, replayed, stale and unsigned posts are refused and
recorded nowhere; events about no delivery of the ledger are answered 200 and left."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailcast.ledger.store import Ledger
from tests.test_tracking import Service
from tests.webhook_fakes import TRACKING_SECRET, SentRun, post

MAILGUN_KEY = "mailgun-signing-key-" + "0" * 12
MAILJET_AUTH = ("mailjet", "p4ss-w0rd:with-colon")
SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())


def _der_b64(key: ec.EllipticCurvePrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
def service(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", TRACKING_SECRET)
    monkeypatch.setenv("MAILCAST_SENDGRID_WEBHOOK_KEY", _der_b64(SENDGRID_KEY))
    monkeypatch.setenv("MAILCAST_MAILGUN_WEBHOOK_KEY", MAILGUN_KEY)
    monkeypatch.setenv("MAILCAST_MAILJET_WEBHOOK_AUTH", ":".join(MAILJET_AUTH))
    Ledger(db_url)
    with Service(db_url) as s:
        yield s


# -- SendGrid ---------------------------------------------------------------------------------


def sendgrid_headers(
    body: bytes, *, key: Any = SENDGRID_KEY, at: float | None = None
) -> dict[str, str]:
    """SendGrid's signature: ECDSA P-256 / SHA-256 over the timestamp then the body."""
    stamp = str(int(time.time() if at is None else at))
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def sg_event(event: str, address: str, x_message_id: str | None, **fields: Any) -> dict[str, Any]:
    e = {
        "email": address,
        "timestamp": int(time.time()) - 30,
        "event": event,
        "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
        "category": ["spring"],
        **fields,
    }
    if x_message_id:
        e["sg_message_id"] = f"{x_message_id}.filterdrecv-5645d9c87f-78xgx-1-62A7B3C4-9.0"
    return e


def test_sendgrid_events(service: Service, db_url: str, tmp_path: Path) -> None:
    names = ("gone", "blocked", "angry", "fine", "slow", "leaving", "viamid", "dropped")
    run = SentRun(db_url, {n: f"sg{n}{uuid.uuid4().hex[:10]}" for n in names} | {"viamid": None})
    m = run.m
    batch = [
        sg_event("processed", m["gone"].address, m["gone"].provider_id),
        sg_event("bounce", m["gone"].address, m["gone"].provider_id, type="bounce",
                 status="5.1.1", reason="550 5.1.1 The email account that you tried to reach "
                 "does not exist.", bounce_classification="Invalid Address"),
        sg_event("bounce", m["blocked"].address, m["blocked"].provider_id, type="blocked",
                 status="5.7.1", reason="554 5.7.1 Service unavailable; client host blocked"),
        sg_event("spamreport", m["angry"].address, m["angry"].provider_id),
        sg_event("delivered", m["fine"].address, m["fine"].provider_id, response="250 2.0.0 OK"),
        sg_event("deferred", m["slow"].address, m["slow"].provider_id,
                 response="451 4.7.1 try again later", attempt="2"),
        sg_event("open", m["fine"].address, m["fine"].provider_id),
        sg_event("group_unsubscribe", m["leaving"].address, m["leaving"].provider_id,
                 asm_group_id=12),
        # no provider id stored: found by smtp-id, mailcast's Message-ID
        {**sg_event("unsubscribe", m["viamid"].address, None), "smtp-id": m["viamid"].message_id},
        sg_event("dropped", m["dropped"].address, m["dropped"].provider_id,
                 reason="Bounced Address"),
        sg_event("bounce", "stranger@example.org", "NotOurs123", type="bounce", status="5.1.1",
                 reason="550 5.1.1 unknown"),
    ]  # fmt: skip
    body = json.dumps(batch).encode()
    url = f"{service.url}/hooks/sendgrid"
    reply = post(url, body, **sendgrid_headers(body))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"received": 11, "recorded": 8, "already": 0, "ignored": 3,
                            "suppressed": 5}  # fmt: skip
    events = run.events()
    assert [k for k, _ in events["gone"]] == ["bounce"]
    gone = events["gone"][0][1]
    assert gone["type"] == "hard" and gone["status"] == "5.1.1" and gone["source"] == "sendgrid"
    assert gone["provider_message_id"] == m["gone"].provider_id
    assert gone["matched_by"] == "provider-id"
    assert events["blocked"][0][0] == "bounce" and events["blocked"][0][1]["type"] == "soft"
    assert events["angry"][0][0] == "complaint"
    assert [k for k, _ in events["fine"]] == ["delivered"] and run.inbound()["fine"] == [
        "delivered"
    ]
    assert events["slow"][0][0] == "deferral"
    assert events["viamid"][0][0] == "unsubscribe"
    assert events["viamid"][0][1]["matched_by"] == "message-id"
    assert events["dropped"][0][1]["type"] == "hard"
    # a hard bounce, a complaint and unsubscribes keep the next campaign away from the address
    assert run.suppressed() == {"gone": "hard_bounce", "angry": "complaint",
                                "leaving": "unsubscribed", "viamid": "unsubscribed",
                                "dropped": "hard_bounce"}  # fmt: skip
    out = run.next_campaign(tmp_path / "next")
    assert "to send: 3" in out and "rejected: 5" in out
    assert "suppressed:hard_bounce" in out and "suppressed:complaint" in out
    before = run.counts()

    # SendGrid posting the same events again (signed anew): recorded once
    again = post(url, body, **sendgrid_headers(body))
    assert again.status_code == 200 and again.json()["already"] == 8
    # the very same post replayed, a stale one, a forged one, an unsigned one: refused
    headers = sendgrid_headers(body)
    assert post(url, body, **headers).status_code == 200
    assert post(url, body, **headers).status_code == 403
    assert post(url, body, **sendgrid_headers(body, at=time.time() - 600)).status_code == 403
    forger = ec.generate_private_key(ec.SECP256R1())
    assert post(url, body, **sendgrid_headers(body, key=forger)).status_code == 403
    tampered = body.replace(b'"spamreport"', b'"delivered" ')
    assert post(url, tampered, **headers).status_code == 403
    assert post(url, body).status_code == 401
    assert run.counts() == before


# -- Mailgun ----------------------------------------------------------------------------------


def mailgun_body(event: dict[str, Any], *, key: str = MAILGUN_KEY, at: float | None = None,
                 token: str | None = None) -> bytes:  # fmt: skip
    """Mailgun's JSON webhook: ``signature`` (HMAC-SHA256 of timestamp + token) and ``event-data``."""
    stamp = str(int(time.time() if at is None else at))
    token = token or secrets.token_hex(25)
    digest = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": stamp, "token": token, "signature": digest},
            "event-data": event,
        }
    ).encode()


def mg_event(event: str, address: str, message_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": secrets.token_urlsafe(16),
        "timestamp": time.time() - 20,
        "event": event,
        "recipient": address,
        "message": {"headers": {"message-id": message_id, "subject": "Spring picks"}},
        **fields,
    }


def test_mailgun_events(service: Service, db_url: str, tmp_path: Path) -> None:
    names = ("gone", "full", "later", "angry", "leaving", "fine", "viamid")
    # Mailgun's send API answers with an id in angle brackets; its events carry it bare
    run = SentRun(db_url, {n: f"<20261130.{uuid.uuid4().hex[:12]}@mg.example.com>" for n in names}
                  | {"viamid": None})  # fmt: skip
    m = run.m

    def bare(name: str) -> str:
        return str(m[name].provider_id).strip("<>")

    url = f"{service.url}/hooks/mailgun"
    posts = {
        "gone": mg_event("failed", m["gone"].address, bare("gone"), severity="permanent",
                         reason="bounce", **{"delivery-status": {
                             "code": 550, "message": "5.1.1 The email account that you tried "
                             "to reach does not exist.", "description": ""}}),
        "full": mg_event("failed", m["full"].address, bare("full"), severity="permanent",
                         reason="bounce", **{"delivery-status": {
                             "code": 552, "message": "5.2.2 mailbox full"}}),
        "later": mg_event("failed", m["later"].address, bare("later"), severity="temporary",
                          reason="generic", **{"delivery-status": {
                              "code": 421, "message": "4.4.2 timeout", "attempt-no": 1}}),
        "angry": mg_event("complained", m["angry"].address, bare("angry")),
        "leaving": mg_event("unsubscribed", m["leaving"].address, bare("leaving")),
        "fine": mg_event("delivered", m["fine"].address, bare("fine"),
                         **{"delivery-status": {"code": 250, "message": "OK"}}),
        # Mailgun kept mailcast's own Message-ID
        "viamid": mg_event("failed", m["viamid"].address, m["viamid"].message_id.strip("<>"),
                           severity="permanent", reason="suppress-bounce",
                           **{"delivery-status": {"code": 605, "message":
                              "Not delivering to previously bounced address"}}),
    }  # fmt: skip
    for name, event in posts.items():
        reply = post(url, mailgun_body(event))
        assert reply.status_code == 200, (name, reply.text)
        assert reply.json()["recorded"] == 1, name
    stranger = mg_event("failed", "nobody@example.org", "x@mg.example.com", severity="permanent")
    assert post(url, mailgun_body(stranger)).json()["ignored"] == 1
    events = run.events()
    assert events["gone"][0][0] == "bounce" and events["gone"][0][1]["type"] == "hard"
    assert events["full"][0][1]["type"] == "soft"  # a full mailbox is not a bad address
    assert events["later"][0][0] == "deferral"
    assert events["angry"][0][0] == "complaint"
    assert events["leaving"][0][0] == "unsubscribe"
    assert [k for k, _ in events["fine"]] == ["delivered"] and run.inbound()["fine"] == [
        "delivered"
    ]
    assert events["viamid"][0][1]["matched_by"] == "message-id"
    assert run.suppressed() == {"gone": "hard_bounce", "angry": "complaint",
                                "leaving": "unsubscribed", "viamid": "hard_bounce"}  # fmt: skip
    out = run.next_campaign(tmp_path / "next")
    assert "to send: 3" in out and "rejected: 4" in out and "suppressed:hard_bounce" in out
    before = run.counts()

    again = post(url, mailgun_body(posts["gone"]))  # Mailgun retrying: a fresh signature
    assert again.status_code == 200 and again.json()["already"] == 1
    replayed = mailgun_body(posts["angry"])
    assert post(url, replayed).status_code == 200
    assert post(url, replayed).status_code == 403  # the same token again
    assert post(url, mailgun_body(posts["gone"], at=time.time() - 900)).status_code == 403
    assert post(url, mailgun_body(posts["gone"], key="not-the-key")).status_code == 403
    unsigned = json.dumps({"event-data": posts["gone"]}).encode()
    assert post(url, unsigned).status_code == 401
    # a signature taken from a genuine post does not sign other content: it signs no content
    # at all (Mailgun's scheme), so the token cache is what stops a replay of a captured one
    assert run.counts() == before


# -- Mailjet ----------------------------------------------------------------------------------


def mj_event(event: str, address: str, message_id: str | None, **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event": event,
        "time": int(time.time()) - 10,
        "email": address,
        "mj_campaign_id": 7,
        "mj_contact_id": 4242,
        "customcampaign": "",
        "Payload": "",
        **fields,
    }
    if message_id:
        e["MessageID"] = int(message_id)
        e["Message_GUID"] = str(uuid.uuid4())
    return e


def test_mailjet_events(
    service: Service, db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    names = ("gone", "soft", "blocked", "angry", "leaving", "fine", "custom")
    run = SentRun(db_url, {n: str(288230376151711744 + secrets.randbelow(10**9)) for n in names})
    m = run.m
    url = f"{service.url}/hooks/mailjet"
    grouped = [
        mj_event("bounce", m["gone"].address, m["gone"].provider_id, blocked=False,
                 hard_bounce=True, error_related_to="recipient", error="user unknown",
                 comment="host mx.example.net said: 550 5.1.1 unknown user"),
        mj_event("bounce", m["soft"].address, m["soft"].provider_id, blocked=False,
                 hard_bounce=False, error_related_to="recipient", error="quota exceeded"),
        mj_event("blocked", m["blocked"].address, m["blocked"].provider_id,
                 error_related_to="recipient", error="user unknown"),
        mj_event("spam", m["angry"].address, m["angry"].provider_id, source="JMRPP"),
        mj_event("unsub", m["leaving"].address, m["leaving"].provider_id, mj_list_id=3,
                 ip="192.0.2.1", geo="FR", agent="Mozilla/5.0"),
        mj_event("sent", m["fine"].address, m["fine"].provider_id,
                 mj_message_id="19421777396215294", smtp_reply="sent (250 2.0.0 OK)"),
        mj_event("open", m["fine"].address, m["fine"].provider_id),
        # the send set CustomID to mailcast's Message-ID; Mailjet echoes it
        mj_event("spam", m["custom"].address, None, CustomID=m["custom"].message_id),
    ]  # fmt: skip
    body = json.dumps(grouped).encode()
    reply = post(url, body, Authorization=basic(*MAILJET_AUTH))
    assert reply.status_code == 200, reply.text
    assert reply.json()["recorded"] == 7
    events = run.events()
    assert events["gone"][0][1]["type"] == "hard"
    assert events["soft"][0][1]["type"] == "soft"
    assert events["blocked"][0][1]["type"] == "hard"
    assert [k for k, _ in events["angry"]] == ["complaint"]
    assert [k for k, _ in events["custom"]] == ["complaint"]
    assert events["leaving"][0][0] == "unsubscribe"
    assert [k for k, _ in events["fine"]] == ["delivered"] and run.inbound()["fine"] == [
        "delivered"
    ]
    assert run.suppressed() == {"gone": "hard_bounce", "blocked": "hard_bounce",
                                "angry": "complaint", "custom": "complaint",
                                "leaving": "unsubscribed"}  # fmt: skip
    out = run.next_campaign(tmp_path / "next")
    assert "to send: 2" in out and "rejected: 5" in out and "suppressed:hard_bounce" in out
    before = run.counts()
    # Mailjet retrying the same post: recorded once; one event on its own (not grouped) too
    assert post(url, body, Authorization=basic(*MAILJET_AUTH)).json()["already"] == 7
    single = json.dumps(grouped[0]).encode()
    assert post(url, single, Authorization=basic(*MAILJET_AUTH)).json()["already"] == 1
    # no credentials, wrong ones: refused
    no_auth = post(url, body)
    assert no_auth.status_code == 401 and no_auth.headers["www-authenticate"].startswith("Basic")
    assert post(url, body, Authorization=basic("mailjet", "guess")).status_code == 403
    assert post(url, body, Authorization="Bearer abc").status_code == 401
    assert run.counts() == before
    assert "refused (wrong credentials)" in caplog.text
    assert MAILJET_AUTH[1] not in caplog.text and "guess" not in caplog.text  # no secret logged


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_unconfigured_providers_have_no_endpoint(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", TRACKING_SECRET)
    Ledger(db_url)
    with Service(db_url) as s:
        for name in ("ses", "sendgrid", "mailgun", "mailjet"):
            assert post(f"{s.url}/hooks/{name}", b"[]").status_code == 404, name
        assert post(f"{s.url}/hooks/other", b"[]").status_code == 404


def test_a_bad_webhook_secret_is_one_line_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailcast.errors import TrackingError
    from mailcast.settings import get_settings
    from mailcast.web.hooks.common import HookConfig
    from mailcast.web.hooks.sendgrid import load_key

    with pytest.raises(TrackingError, match="not an ECDSA public key") as bad:
        load_key("bm90IGEga2V5")
    assert bad.value.where == "MAILCAST_SENDGRID_WEBHOOK_KEY"
    monkeypatch.setenv("MAILCAST_MAILJET_WEBHOOK_AUTH", "no-colon")
    with pytest.raises(TrackingError, match="user:password"):
        HookConfig.from_settings(get_settings())
    monkeypatch.setenv("MAILCAST_MAILJET_WEBHOOK_AUTH", "mj:secret-pass")
    monkeypatch.setenv(
        "MAILCAST_SES_TOPIC_ARNS", "arn:aws:sns:eu-west-1:1:a,arn:aws:sns:eu-west-1:1:b"
    )
    config = HookConfig.from_settings(get_settings())
    assert config.ses_topics == {"arn:aws:sns:eu-west-1:1:a", "arn:aws:sns:eu-west-1:1:b"}
    assert "secret-pass" not in repr(config)


# -- the event parsers take whatever a (signed) post holds ------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = (
    "event", "email", "timestamp", "time", "sg_event_id", "sg_message_id", "smtp-id", "type",
    "status", "reason", "response", "id", "recipient", "severity", "delivery-status", "message",
    "MessageID", "Message_GUID", "CustomID", "hard_bounce", "error", "error_related_to",
    "notificationType", "eventType", "mail", "bounce", "complaint", "delivery", "deliveryDelay",
)  # fmt: skip
_EVENTS = st.dictionaries(
    st.sampled_from(_FIELDS),
    _JSON | st.sampled_from(["bounce", "failed", "Bounce", "Permanent", "dropped", "permanent"]),
    max_size=12,
)
_OUTCOMES = {"hard", "soft", "complaint", "deferral", "unsubscribe", "delivered", "ignored"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EVENTS)
def test_event_parsers_never_fail_on_odd_json(data: dict[str, Any]) -> None:
    from mailcast.web.hooks import mailgun, mailjet, sendgrid, ses

    found = [sendgrid.event(data), mailgun.event(data), mailjet.event(data), *ses.events(data)]
    for e in found:
        assert e.outcome in _OUTCOMES and len(e.key) <= 400
        assert all(isinstance(i, str) for i in e.provider_ids)
        e.report().detail()
        e.lookup()


def test_a_post_over_the_size_limit_is_refused(service: Service) -> None:
    from mailcast.web.hooks.common import MAX_BODY

    body = b"[" + b" " * MAX_BODY + b"]"
    reply = post(f"{service.url}/hooks/mailjet", body, Authorization=basic(*MAILJET_AUTH))
    assert reply.status_code == 413


class _LedgerDown:
    def begin(self) -> Any:
        raise ConnectionError("the ledger is down")


def test_a_ledger_outage_answers_503_and_the_providers_retry_is_taken(db_url: str) -> None:
    """The ledger failing mid-post: 503 (the provider retries), and the retry of the very same
    signed post is not taken for a replay."""
    from starlette.applications import Starlette

    from mailcast.web.hooks import HookConfig, routes

    run = SentRun(db_url, {"gone": f"<{uuid.uuid4().hex}@mg.example.com>"})
    m = run.m["gone"]
    app = Starlette(routes=routes(_LedgerDown(), HookConfig(mailgun_key=MAILGUN_KEY)))
    hooks = app.routes[0].routes[0].endpoint.__self__.hooks  # type: ignore[attr-defined]
    event = mg_event("failed", m.address, str(m.provider_id).strip("<>"), severity="permanent",
                     **{"delivery-status": {"code": 550, "message": "5.1.1 no such user"}})  # fmt: skip
    body = mailgun_body(event)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hooks") as client:
            assert (await client.post("/hooks/mailgun", content=body)).status_code == 503
            assert run.counts() == (0, 0)
            hooks.engine = Ledger(db_url).engine  # the ledger is back
            reply = await client.post("/hooks/mailgun", content=body)
            assert reply.status_code == 200 and reply.json()["recorded"] == 1
            again = await client.post("/hooks/mailgun", content=body)
            assert again.status_code == 403  # now a replay

    asyncio.run(scenario())
    assert run.suppressed() == {"gone": "hard_bounce"}
