"""Amazon SNS messages posted to an HTTPS subscription: checking that one is genuine, and
confirming a subscription.

A message is accepted only when its ``TopicArn`` is one the operator configured
(``MAILCAST_SES_TOPIC_ARNS``) and its signature verifies: ``SignatureVersion`` 1 (SHA1withRSA)
or 2 (SHA256withRSA) over the canonical string AWS documents (``name\\nvalue\\n`` for Message,
MessageId, Subject when present, Timestamp, TopicArn, Type of a notification; Message,
MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type of a (un)subscription confirmation),
with the public key of the certificate at ``SigningCertURL``. That URL must be
``https://sns.<the topic's region>.amazonaws.com/….pem`` (``.com.cn`` in China); the
certificate is fetched over verified TLS once and cached. A subscription is confirmed by a GET
of its ``SubscribeURL``, under the same rule. Nothing else is ever fetched.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailcast.web.hooks.common import HookConfig, Refused

_HOST = re.compile(r"sns\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?")
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = (
    "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
)  # fmt: skip
_HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERT = 64 * 1024


def region(topic_arn: str) -> str | None:
    """``arn:aws:sns:<region>:<account>:<name>`` → region."""
    parts = topic_arn.split(":")
    return parts[3] if len(parts) == 6 and parts[0] == "arn" and parts[2] == "sns" else None


def string_to_sign(message: dict[str, Any]) -> bytes:
    kind = message.get("Type")
    fields = _NOTIFICATION_FIELDS if kind == "Notification" else _CONFIRMATION_FIELDS
    out = []
    for name in fields:
        value = message.get(name)
        if value is None:
            if name == "Subject":
                continue
            raise Refused(403, f"no {name}")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


class Sns:
    """The signing certificates seen (by URL) and the HTTPS client that fetches them."""

    def __init__(self, config: HookConfig) -> None:
        self.config = config
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._lock = threading.Lock()
        verify: ssl.SSLContext | bool = True
        if config.sns_test_ca:
            verify = ssl.create_default_context(cafile=config.sns_test_ca)
        self._verify = verify

    def allowed(self, url: str, topic_region: str) -> bool:
        """Whether ``url`` is on SNS in the topic's region (or the tests' allowed origin)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme != "https" or parts.username or parts.password:
            return False
        test = self.config.sns_test_origin
        if test and f"{parts.scheme}://{parts.netloc}" == test.rstrip("/"):
            return True
        host = _HOST.fullmatch(parts.hostname or "")
        return host is not None and host.group(1) == topic_region and port in (None, 443)

    async def _get(self, url: str) -> httpx.Response:
        async with httpx.AsyncClient(
            verify=self._verify, follow_redirects=False, trust_env=False, timeout=10
        ) as client:
            return await client.get(url)

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            cached = self._keys.get(url)
        if cached is not None:
            return cached
        try:
            response = await self._get(url)
        except httpx.HTTPError as exc:
            why = f"cannot fetch the signing certificate: {type(exc).__name__}"
            raise Refused(503, why) from None
        if response.status_code != 200 or len(response.content) > MAX_CERT:
            raise Refused(403, f"signing certificate: HTTP {response.status_code}")
        try:
            cert = x509.load_pem_x509_certificate(response.content)
        except ValueError:
            raise Refused(403, "the signing certificate is not a PEM certificate") from None
        now = datetime.now(UTC)
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise Refused(403, "the signing certificate has expired")
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise Refused(403, "the signing certificate holds no RSA key")
        with self._lock:
            self._keys[url] = key
        return key

    async def verify(self, message: dict[str, Any]) -> None:
        """Refused unless ``message`` comes from a configured topic and its signature holds."""
        topic = str(message.get("TopicArn") or "")
        if topic not in self.config.ses_topics:
            raise Refused(403, "a topic that is not configured (MAILCAST_SES_TOPIC_ARNS)")
        topic_region = region(topic) or ""
        algorithm = _HASHES.get(str(message.get("SignatureVersion")))
        if algorithm is None or not message.get("Signature"):
            raise Refused(401, "unsigned (or an unknown SignatureVersion)")
        url = str(message.get("SigningCertURL") or "")
        if not url.endswith(".pem") or not self.allowed(url, topic_region):
            raise Refused(403, "SigningCertURL is not on sns.<region>.amazonaws.com")
        try:
            signature = base64.b64decode(str(message["Signature"]), validate=True)
        except (binascii.Error, ValueError):
            raise Refused(403, "bad signature") from None
        key = await self._key(url)
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature:
            raise Refused(403, "bad signature") from None

    async def confirm(self, message: dict[str, Any]) -> None:
        """GET the (verified) message's SubscribeURL."""
        url = str(message.get("SubscribeURL") or "")
        if not self.allowed(url, region(str(message.get("TopicArn"))) or ""):
            raise Refused(403, "SubscribeURL is not on sns.<region>.amazonaws.com")
        try:
            response = await self._get(url)
        except httpx.HTTPError as exc:
            raise Refused(503, f"cannot confirm the subscription: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise Refused(503, f"confirming the subscription: HTTP {response.status_code}")
