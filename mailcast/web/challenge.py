"""A proof-of-work challenge for the subscription form: a CAPTCHA that needs no outside service.

The server issues a challenge: a random nonce, an expiry and a difficulty (bits), signed with
HMAC-SHA256 under the tracking secret and bound to the form (the list's name). The page's small
script finds a counter such that ``sha256(challenge + counter)`` (the counter in decimal, both
as ASCII) starts with ``bits`` zero bits (2**bits hashes on average: a fraction of a second for
a person, a real cost for a bot posting thousands) and puts it in a hidden field. The server
checks the signature, the form, the expiry, the work, and that the challenge was not used
before (:class:`SeenChallenges`, in this process's memory).

Layout before encoding::

    version (1) | bits (1) | expires, Unix seconds (8) | nonce (16)
    | HMAC-SHA256(secret, "mailcast-challenge" | form | the bytes before)[:16]

encoded as lower-case base32 without padding (like the tracking tokens).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

VERSION = 1
_DOMAIN = b"mailcast-challenge\x00"
_NONCE = 16
_MAC = 16
_BODY = 1 + 1 + 8 + _NONCE
_LENGTH = _BODY + _MAC
MAX_BITS = 32
MAX_COUNTER_DIGITS = 12


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str  # what the page holds and the script hashes
    bits: int
    expires: int  # Unix seconds
    nonce: bytes


def _mac(secret: bytes, form: str, body: bytes) -> bytes:
    data = _DOMAIN + form.encode("utf-8", "surrogatepass") + b"\x00" + body
    return hmac.new(secret, data, hashlib.sha256).digest()[:_MAC]


def issue(secret: bytes, form: str, bits: int, ttl: float, *, now: float | None = None) -> str:
    """A new challenge for ``form`` (the list's name): ``bits`` of work, valid ``ttl`` seconds."""
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be within 0..{MAX_BITS}")
    expires = int((time.time() if now is None else now) + ttl)
    body = struct.pack(">BBQ", VERSION, bits, expires) + os.urandom(_NONCE)
    return base64.b32encode(body + _mac(secret, form, body)).decode("ascii").rstrip("=").lower()


def parse(secret: bytes, form: str, text: str) -> Challenge | None:
    """The challenge when it is genuine and issued for ``form``; else None (forged, altered,
    truncated, for another form, another secret). Expiry is not checked here."""
    if not text or len(text) > 80 or not text.isascii() or text != text.lower():
        return None  # one spelling only: the lower-case one issued
    upper = text.upper()
    try:
        raw = base64.b32decode(upper + "=" * (-len(upper) % 8))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _LENGTH:
        return None
    body, mac = raw[:_BODY], raw[_BODY:]
    if not hmac.compare_digest(mac, _mac(secret, form, body)):
        return None
    if base64.b32encode(raw).decode("ascii").rstrip("=") != upper:
        return None
    version, bits, expires = struct.unpack(">BBQ", body[:10])
    if version != VERSION or bits > MAX_BITS:
        return None
    return Challenge(text, bits, expires, body[10:])


def leading_zero_bits(digest: bytes) -> int:
    n = 0
    for byte in digest:
        if byte == 0:
            n += 8
            continue
        return n + 8 - byte.bit_length()
    return n


def work_done(text: str, counter: str, bits: int) -> bool:
    """Whether ``sha256(text + counter)`` starts with ``bits`` zero bits (``counter``: decimal
    digits, at most MAX_COUNTER_DIGITS)."""
    if not counter or len(counter) > MAX_COUNTER_DIGITS or not counter.isascii():
        return False
    if not counter.isdigit():
        return False
    digest = hashlib.sha256((text + counter).encode("ascii")).digest()
    return leading_zero_bits(digest) >= bits


def solve(text: str, bits: int) -> str:
    """The first counter that does the work (what the page's script computes; for tests and
    scripts that subscribe someone through the form)."""
    prefix = hashlib.sha256(text.encode("ascii"))
    counter = 0
    while True:
        h = prefix.copy()
        h.update(str(counter).encode("ascii"))
        if leading_zero_bits(h.digest()) >= bits:
            return str(counter)
        counter += 1


class SeenChallenges:
    """Challenges already used, kept until they expire (at most ``limit``: past that the oldest
    are dropped, so a flood cannot grow memory). Thread-safe."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def use(self, challenge: Challenge, now: float) -> bool:
        """Mark the challenge used; False when it was used before."""
        with self._lock:
            seen = self._seen
            while seen:  # forget the expired ones (insertion order is close to expiry order)
                nonce, expires = next(iter(seen.items()))
                if expires >= now and len(seen) < self.limit:
                    break
                del seen[nonce]
            if challenge.nonce in seen:
                return False
            seen[challenge.nonce] = challenge.expires
            return True


# Why a challenge was refused (for the log; the page says less).
FORGED, EXPIRED, REUSED, NO_WORK = "forged", "expired", "reused", "work not done"


def check(
    secret: bytes,
    form: str,
    text: str,
    counter: str,
    seen: SeenChallenges,
    *,
    min_bits: int = 0,
    now: float | None = None,
) -> str | None:
    """None when the challenge is genuine, for ``form``, not expired, of at least ``min_bits``,
    the work done and not used before (it is then marked used); else why not."""
    now = time.time() if now is None else now
    challenge = parse(secret, form, text)
    if challenge is None or challenge.bits < min_bits:
        return FORGED
    if challenge.expires < now:
        return EXPIRED
    if not work_done(challenge.text, counter, challenge.bits):
        return NO_WORK
    if not seen.use(challenge, now):
        return REUSED
    return None


# The page's solver: a small SHA-256 in JavaScript (no outside service, and no secure context
# needed as crypto.subtle would be), run in slices so the page stays responsive. It fills the
# hidden field ``pow`` and then lets the form submit.
SCRIPT = r"""
(function () {
  var K = [0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,
    0xab1c5ed5,0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,
    0xc19bf174,0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,
    0x76f988da,0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,
    0x14292967,0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,
    0x92722c85,0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,
    0x106aa070,0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,
    0x682e6ff3,0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,
    0xc67178f2];
  var W = new Array(64);
  function sha256(s) {  // s: an ASCII string; returns the digest's 8 words
    var n = s.length, words = ((n + 9 + 63) >> 6) << 4, m = new Array(words), i, j;
    for (i = 0; i < words; i++) m[i] = 0;
    for (i = 0; i < n; i++) m[i >> 2] |= s.charCodeAt(i) << (24 - (i & 3) * 8);
    m[n >> 2] |= 0x80 << (24 - (n & 3) * 8);
    m[words - 1] = n * 8;
    var h = [0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,
      0x5be0cd19];
    for (i = 0; i < words; i += 16) {
      var a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
      for (j = 0; j < 64; j++) {
        if (j < 16) W[j] = m[i + j] | 0;
        else {
          var x = W[j - 15], y = W[j - 2];
          W[j] = (((x >>> 7 | x << 25) ^ (x >>> 18 | x << 14) ^ (x >>> 3)) + W[j - 16] +
            ((y >>> 17 | y << 15) ^ (y >>> 19 | y << 13) ^ (y >>> 10)) + W[j - 7]) | 0;
        }
        var t1 = (k + ((e >>> 6 | e << 26) ^ (e >>> 11 | e << 21) ^ (e >>> 25 | e << 7)) +
          ((e & f) ^ (~e & g)) + K[j] + W[j]) | 0;
        var t2 = (((a >>> 2 | a << 30) ^ (a >>> 13 | a << 19) ^ (a >>> 22 | a << 10)) +
          ((a & b) ^ (a & c) ^ (b & c))) | 0;
        k = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0;
      h[3] = (h[3] + d) | 0; h[4] = (h[4] + e) | 0; h[5] = (h[5] + f) | 0;
      h[6] = (h[6] + g) | 0; h[7] = (h[7] + k) | 0;
    }
    return h;
  }
  function zeros(h) {
    var n = 0;
    for (var i = 0; i < 8; i++) {
      if (h[i] === 0) { n += 32; continue; }
      return n + Math.clz32(h[i]);
    }
    return n;
  }
  var form = document.getElementById("subscribe");
  if (!form) return;
  var field = form.elements["pow"], status = document.getElementById("pow-status");
  var text = form.getAttribute("data-challenge"), bits = +form.getAttribute("data-bits");
  var counter = 0, done = false, waiting = false;
  function slice() {
    var end = Date.now() + 40;
    while (Date.now() < end) {
      for (var i = 0; i < 500; i++, counter++) {
        if (zeros(sha256(text + counter)) >= bits) {
          field.value = String(counter); done = true;
          if (status) status.textContent = "";
          if (waiting) form.submit();
          return;
        }
      }
    }
    setTimeout(slice, 0);
  }
  form.addEventListener("submit", function (event) {
    if (done) return;
    event.preventDefault(); waiting = true;
    if (status) status.textContent = "One moment\u2026";
  });
  setTimeout(slice, 0);
})();
"""


def script_hash() -> str:
    """The CSP source allowing exactly :data:`SCRIPT` inline."""
    digest = hashlib.sha256(SCRIPT.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"
