"""SES notifications through SNS on ``mailcast serve``'s ``/hooks/ses``, over real HTTP (uvicorn on
127.0.0.1) with a local HTTPS fake of SNS (a test CA's certificate for 127.0.0.1, allowed by
MAILCAST_SNS_TEST_ORIGIN) that serves the signing certificate and takes subscription
confirmations. Messages are signed as AWS documents (SignatureVersion 1: SHA1withRSA, 2:
SHA256withRSA, over the canonical ``name\\nvalue\\n`` string) with a test key; on SQLite and
Postgres."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from mailcast.ledger.store import Ledger
from mailcast.web.hooks.common import HookConfig
from mailcast.web.hooks.sns import Sns
from tests.smtp_faults import self_signed_context
from tests.test_tracking import Service
from tests.webhook_fakes import TRACKING_SECRET, SentRun, post

TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailcast-ses"
OTHER_TOPIC = "arn:aws:sns:eu-west-1:123456789012:someone-else"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _signing_cert() -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(SIGNING_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(SIGNING_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class FakeSns:
    """SNS's certificate host and confirmation endpoint, over HTTPS on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        context, self.ca = self_signed_context(folder)
        self.pem = _signing_cert()
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                parts = urlsplit(self.path)
                if parts.path.endswith(".pem") and "SimpleNotificationService" in parts.path:
                    self._answer(200, fake.pem)
                elif parse_qs(parts.query).get("Action") == ["ConfirmSubscription"]:
                    self._answer(200, b"<ConfirmSubscriptionResponse/>")
                else:
                    self._answer(404, b"not found")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.origin = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.cert_url = f"{self.origin}/SimpleNotificationService-0123456789abcdef.pem"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_sns(tmp_path: Path) -> Iterator[FakeSns]:
    fake = FakeSns(tmp_path / "tls")
    yield fake
    fake.close()


@pytest.fixture
def service(db_url: str, fake_sns: FakeSns, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", TRACKING_SECRET)
    monkeypatch.setenv("MAILCAST_SES_TOPIC_ARNS", f"{TOPIC}, arn:aws:sns:us-east-1:1:unused")
    monkeypatch.setenv("MAILCAST_SNS_TEST_ORIGIN", fake_sns.origin)
    monkeypatch.setenv("MAILCAST_SNS_TEST_CA", str(fake_sns.ca))
    Ledger(db_url)
    with Service(db_url) as s:
        yield s


def sns_message(kind: str, body: str, cert_url: str, *, version: str = "1", topic: str = TOPIC,
                at: float | None = None, **extra: str) -> dict[str, Any]:  # fmt: skip
    """An SNS message as SNS posts it, signed per AWS's documentation."""
    stamp = dt.datetime.fromtimestamp(time.time() if at is None else at, dt.UTC)
    m = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": body,
        "Timestamp": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
        "SignatureVersion": version,
        "SigningCertURL": cert_url,
        **extra,
    }
    return sign(m, version)


def sign(m: dict[str, Any], version: str) -> dict[str, Any]:
    if m["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    canonical = "".join(f"{n}\n{m[n]}\n" for n in names if n in m)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = SIGNING_KEY.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
    return {**m, "Signature": base64.b64encode(signature).decode()}


def mail(ses_id: str | None, message_id: str, address: str) -> dict[str, Any]:
    return {
        "timestamp": "2026-11-30T07:00:00.000Z",
        "source": "news@acme.example",
        "messageId": ses_id or "0100018c00000000-unknown-000000",
        "destination": [address],
        "commonHeaders": {
            "from": ["news@acme.example"],
            "to": [address],
            "messageId": message_id,
            "subject": "Spring picks",
        },
    }


def bounce(
    kind: str, sub: str, address: str, status: str | None, diagnostic: str | None
) -> dict[str, Any]:
    recipient: dict[str, Any] = {"emailAddress": address, "action": "failed"}
    if status:
        recipient |= {"status": status, "diagnosticCode": diagnostic}
    return {"bounceType": kind, "bounceSubType": sub, "bouncedRecipients": [recipient],
            "timestamp": "2026-11-30T07:01:00.000Z", "feedbackId": str(uuid.uuid4())}  # fmt: skip


def test_ses_notifications(
    service: Service, fake_sns: FakeSns, db_url: str, tmp_path: Path
) -> None:
    names = ("gone", "later", "angry", "fine", "slow", "listed")
    run = SentRun(db_url, {n: f"0100018c{uuid.uuid4().hex}-000000" for n in names}
                  | {"angry": None})  # fmt: skip
    m = run.m
    url = f"{service.url}/hooks/ses"
    cert = fake_sns.cert_url

    # the subscription of a configured topic is confirmed; another topic's is refused
    confirm_url = f"{fake_sns.origin}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=t0k3n"
    sub = sns_message("SubscriptionConfirmation", "You have chosen to subscribe…", cert,
                      SubscribeURL=confirm_url, Token="t0k3n")  # fmt: skip
    reply = post(url, json.dumps(sub).encode())
    assert reply.status_code == 200 and reply.json() == {"confirmed": True}, reply.text
    assert any("Token=t0k3n" in r for r in fake_sns.requests)
    other = sns_message("SubscriptionConfirmation", "…", cert, topic=OTHER_TOPIC,
                        SubscribeURL=confirm_url.replace("t0k3n", "other"), Token="other")  # fmt: skip
    assert post(url, json.dumps(other).encode()).status_code == 403
    assert not any("Token=other" in r for r in fake_sns.requests)

    def ses(name: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {"mail": mail(m[name].provider_id, m[name].message_id, m[name].address), **payload}

    notifications = [
        # the notification form (notificationType), SignatureVersion 1
        ("1", ses("gone", {"notificationType": "Bounce", "bounce": bounce(
            "Permanent", "General", m["gone"].address, "5.1.1",
            "smtp; 550 5.1.1 user unknown")})),
        ("1", ses("later", {"notificationType": "Bounce", "bounce": bounce(
            "Transient", "MailboxFull", m["later"].address, "4.2.2", "smtp; 452 4.2.2 full")})),
        ("1", ses("listed", {"notificationType": "Bounce", "bounce": bounce(
            "Permanent", "OnAccountSuppressionList", m["listed"].address, None, None)})),
        # event publishing's form (eventType), SignatureVersion 2; found by the Message-ID
        ("2", ses("angry", {"eventType": "Complaint", "complaint": {
            "complainedRecipients": [{"emailAddress": m["angry"].address}],
            "timestamp": "2026-11-30T07:02:00.000Z", "feedbackId": str(uuid.uuid4()),
            "complaintFeedbackType": "abuse"}})),
        ("2", ses("fine", {"eventType": "Delivery", "delivery": {
            "timestamp": "2026-11-30T07:00:02.000Z", "recipients": [m["fine"].address],
            "smtpResponse": "250 2.6.0 Message received"}})),
        ("2", ses("slow", {"eventType": "DeliveryDelay", "deliveryDelay": {
            "timestamp": "2026-11-30T07:03:00.000Z", "delayType": "MailboxFull",
            "delayedRecipients": [{"emailAddress": m["slow"].address, "status": "4.2.2",
                                   "diagnosticCode": "smtp; 452 4.2.2 over quota"}]}})),
    ]  # fmt: skip
    sent = []
    for version, payload in notifications:
        message = sns_message("Notification", json.dumps(payload), cert, version=version)
        sent.append(message)
        reply = post(url, json.dumps(message).encode())
        assert reply.status_code == 200, reply.text
        assert reply.json()["recorded"] == 1, payload
    stranger = ses("gone", {"notificationType": "Bounce", "bounce": bounce(
        "Permanent", "General", "x@example.org", "5.1.1", "550 5.1.1")})  # fmt: skip
    stranger["mail"] |= {"messageId": "not-ours", "commonHeaders": {"messageId": "<a@b>"}}
    unknown = sns_message("Notification", json.dumps(stranger), cert, Subject="Bounce")
    assert post(url, json.dumps(unknown).encode()).json()["ignored"] == 1
    # the signing certificate was fetched once
    assert sum(r.endswith(".pem") for r in fake_sns.requests) == 1

    events = run.events()
    assert events["gone"][0][0] == "bounce" and events["gone"][0][1]["type"] == "hard"
    assert events["gone"][0][1]["source"] == "ses"
    assert events["later"][0][1]["type"] == "soft"
    assert events["listed"][0][1]["type"] == "hard"
    assert events["angry"][0][0] == "complaint"
    assert events["angry"][0][1]["matched_by"] == "message-id"
    assert [k for k, _ in events["fine"]] == ["delivered"] and run.inbound()["fine"] == [
        "delivered"
    ]
    assert events["slow"][0][0] == "deferral"
    assert run.suppressed() == {"gone": "hard_bounce", "listed": "hard_bounce",
                                "angry": "complaint"}  # fmt: skip
    out = run.next_campaign(tmp_path / "next")
    assert "to send: 3" in out and "rejected: 3" in out and "suppressed:hard_bounce" in out
    before = run.counts()

    # the same bounce through a second subscription (a new SNS MessageId): counted once
    twice = sns_message("Notification", sent[0]["Message"], cert)
    assert post(url, json.dumps(twice).encode()).json()["already"] == 1
    # replayed, stale, tampered, unsigned, a certificate from elsewhere: refused
    assert post(url, json.dumps(sent[0]).encode()).status_code == 403
    stale = sns_message("Notification", sent[0]["Message"], cert, at=time.time() - 3600)
    assert post(url, json.dumps(stale).encode()).status_code == 403
    tampered = dict(twice, Message=sent[3]["Message"], MessageId=str(uuid.uuid4()))
    assert post(url, json.dumps(tampered).encode()).status_code == 403
    unsigned = {k: v for k, v in sns_message("Notification", sent[0]["Message"], cert).items()
                if k != "Signature"}  # fmt: skip
    assert post(url, json.dumps(unsigned).encode()).status_code == 401
    fetched = len(fake_sns.requests)
    for elsewhere in ("https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
                      cert.replace("https://", "http://")):  # fmt: skip
        forged = sns_message("Notification", sent[0]["Message"], elsewhere)
        assert post(url, json.dumps(forged).encode()).status_code == 403
    assert len(fake_sns.requests) == fetched  # nothing fetched from there
    assert run.counts() == before


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem", True),
        ("https://sns.eu-west-1.amazonaws.com:443/SimpleNotificationService-1.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/x.pem", False),  # another region than the topic's
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", False),
        ("http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-1.pem", False),
        ("https://sns.eu-west-1.amazonaws.com.evil.example/x.pem", False),
        ("https://evil.example/sns.eu-west-1.amazonaws.com/x.pem", False),
        ("https://user@sns.eu-west-1.amazonaws.com/x.pem", False),
        ("https://sns.eu-west-1.amazonaws.com:8443/x.pem", False),
        ("https://s3.eu-west-1.amazonaws.com/x.pem", False),
        ("https://127.0.0.1:8443/x.pem", False),  # no test origin set
    ],
)
def test_only_sns_in_the_topics_region_is_fetched(url: str, allowed: bool) -> None:
    assert Sns(HookConfig(ses_topics=frozenset({TOPIC}))).allowed(url, "eu-west-1") is allowed
