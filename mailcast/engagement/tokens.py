"""Opaque, signed tracking tokens.

A token names one delivery (``deliveries.id``), what it is for (open, click, unsubscribe, the
VERP return path of a bounce, the preference page) and, for a click, the link (``links.id``). It holds no address.
Layout before encoding::

    version (1 byte) | kind (1 byte) | delivery id (8 bytes) | link id (8 bytes, clicks only)
    | HMAC-SHA256(secret, "mailcast-tracking" | the bytes before)[:16]

encoded as lower-case base32 without padding (case-insensitive, so a mail system that lower-cases
a VERP local part does not break it; only ``a-z2-7``, safe in URLs and in a local part). Any
change to a byte, a missing or extra character, another kind or another secret makes
:func:`verify` return None: a forged, altered or truncated token never names a delivery.

The secret comes from ``MAILCAST_TRACKING_SECRET`` or from the Prefect Secret block named in
``MAILCAST_TRACKING_SECRET_BLOCK``; the sending flow and ``mailcast serve`` must use the same one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from mailcast.errors import TrackingError
from mailcast.settings import get_settings

VERSION = 1
OPEN, CLICK, UNSUBSCRIBE, BOUNCE = "open", "click", "unsubscribe", "bounce"
PREFERENCES = "preferences"  # the preference page (/p/TOKEN) of the delivery's address
_KIND_BYTES = {OPEN: b"o", CLICK: b"c", UNSUBSCRIBE: b"u", BOUNCE: b"b", PREFERENCES: b"p"}
_KINDS = {v[0]: k for k, v in _KIND_BYTES.items()}
_DOMAIN = b"mailcast-tracking\x00"
MAC_BYTES = 16
MIN_SECRET_BYTES = 16
ENV_SECRET = "MAILCAST_TRACKING_SECRET"
ENV_SECRET_BLOCK = "MAILCAST_TRACKING_SECRET_BLOCK"


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    delivery_id: int
    link_id: int | None = None


def _check_secret(secret: bytes, where: str) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise TrackingError(
            f"the tracking secret is {len(secret)} bytes long; at least {MIN_SECRET_BYTES} needed",
            where=where,
        )
    return secret


def load_secret(secret: str | bytes | None = None, *, block: str | None = None) -> bytes:
    """The signing secret: ``secret`` if given, else MAILCAST_TRACKING_SECRET, else the Prefect
    Secret block ``block`` (or MAILCAST_TRACKING_SECRET_BLOCK). Prefect is imported only for a
    block. Raises TrackingError when there is none or it is too short."""
    if secret:
        raw = secret.encode() if isinstance(secret, str) else secret
        return _check_secret(raw, "tracking secret")
    settings = get_settings()
    if settings.tracking_secret is not None:
        return _check_secret(settings.tracking_secret.get_secret_value().encode(), ENV_SECRET)
    block = block or settings.tracking_secret_block
    if block:
        try:
            from prefect.blocks.system import Secret

            value = Secret.load(block).get()  # type: ignore[union-attr]
        except Exception as exc:
            raise TrackingError(
                f"cannot load the Prefect Secret block: {type(exc).__name__}: {exc}",
                where=f"secret block {block!r}",
            ) from None
        return _check_secret(str(value).encode(), f"secret block {block!r}")
    raise TrackingError("no tracking secret", where=ENV_SECRET)


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _DOMAIN + body, hashlib.sha256).digest()[:MAC_BYTES]


def make(secret: bytes, kind: str, delivery_id: int, link_id: int | None = None) -> str:
    """A token for ``kind`` (open, click, unsubscribe, bounce) of ``delivery_id``; a click
    token also names ``link_id``."""
    if (kind == CLICK) != (link_id is not None):
        raise ValueError("a click token needs a link id, and only a click token has one")
    body = bytes((VERSION,)) + _KIND_BYTES[kind] + struct.pack(">Q", delivery_id)
    if link_id is not None:
        body += struct.pack(">Q", link_id)
    raw = body + _mac(secret, body)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def verify(secret: bytes, token: str, kind: str | None = None) -> Token | None:
    """The token's content when it is genuine (and of ``kind``, when given); else None."""
    if not token or len(token) > 80 or not token.isascii():
        return None
    text = token.upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) not in (2 + 8 + MAC_BYTES, 2 + 16 + MAC_BYTES):
        return None
    body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, body)):
        return None
    # A genuine token re-encodes to itself: no second spelling of the same bytes is accepted.
    if base64.b32encode(raw).decode("ascii").rstrip("=") != text:
        return None
    if body[0] != VERSION or body[1] not in _KINDS:
        return None
    found = _KINDS[body[1]]
    if kind is not None and found != kind:
        return None
    (delivery_id,) = struct.unpack(">Q", body[2:10])
    link_id = struct.unpack(">Q", body[10:18])[0] if len(body) == 18 else None
    if (found == CLICK) != (link_id is not None):
        return None
    return Token(found, delivery_id, link_id)


# -- confirmation tokens (double opt-in) ---------------------------------------------------------
#
# A confirmation link names a contact and a list and expires; there is no delivery yet when it is
# made. Layout before encoding, signed under its own domain (a tracking token never passes as one):
#
#     version (1 byte) | contact id (8 bytes) | list id (4 bytes) | expires, Unix seconds (8 bytes)
#     | HMAC-SHA256(secret, "mailcast-confirm" | the bytes before)[:16]

_CONFIRM_DOMAIN = b"mailcast-confirm\x00"
_CONFIRM_BODY = 1 + 8 + 4 + 8


@dataclass(frozen=True, slots=True)
class Confirmation:
    contact_id: int
    list_id: int
    expires: int  # Unix seconds


def make_confirmation(secret: bytes, contact_id: int, list_id: int, expires: int) -> str:
    """The token of a confirmation link: ``contact_id`` joins ``list_id``; valid until
    ``expires`` (Unix seconds)."""
    body = struct.pack(">BQIQ", VERSION, contact_id, list_id, expires)
    mac = hmac.new(secret, _CONFIRM_DOMAIN + body, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(body + mac).decode("ascii").rstrip("=").lower()


def verify_confirmation(secret: bytes, token: str, now: float) -> Confirmation | None:
    """The confirmation a genuine, unexpired token names; else None."""
    if not token or len(token) > 80 or not token.isascii():
        return None
    text = token.upper()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _CONFIRM_BODY + MAC_BYTES:
        return None
    body, mac = raw[:_CONFIRM_BODY], raw[_CONFIRM_BODY:]
    expected = hmac.new(secret, _CONFIRM_DOMAIN + body, hashlib.sha256).digest()[:MAC_BYTES]
    if not hmac.compare_digest(mac, expected):
        return None
    if base64.b32encode(raw).decode("ascii").rstrip("=") != text:
        return None
    version, contact_id, list_id, expires = struct.unpack(">BQIQ", body)
    if version != VERSION or expires < now:
        return None
    return Confirmation(contact_id, list_id, expires)


def verp_address(secret: bytes, delivery_id: int, domain: str) -> str:
    """The VERP return path ``bounces+TOKEN@domain`` of a delivery."""
    return f"bounces+{make(secret, BOUNCE, delivery_id)}@{domain}"


__all__ = [
    "BOUNCE",
    "CLICK",
    "OPEN",
    "PREFERENCES",
    "UNSUBSCRIBE",
    "Confirmation",
    "Token",
    "TrackingError",
    "load_secret",
    "make",
    "make_confirmation",
    "verify",
    "verify_confirmation",
    "verp_address",
]
