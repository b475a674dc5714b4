"""DKIM signing (RFC 6376), the Composer's last step: RSA-SHA256 and Ed25519-SHA256 (RFC 8463),
relaxed/relaxed canonicalization, over the bytes the MIME builder made.

The key is parsed once per run per process (:func:`signer_for`, called when the run's Composer
is built); per message the work is one pass over the headers (a dozen short lines), one
SHA-256 over the canonical body and one signature by OpenSSL through ``cryptography``: ~125 µs
of CPU in all with Ed25519 (~60 of them the signature), ~1.3 ms with a 2048-bit RSA key,
nearly all of it the RSA private-key operation (``bench/RESULTS.md``).

Signed headers (``h=``): every header field of the message as built (From, To, Subject, Date,
Message-ID, Reply-To, MIME-Version, Content-Type, Content-Transfer-Encoding, List-Unsubscribe,
List-Unsubscribe-Post, the campaign's own headers), in order; then :data:`OVERSIGNED` once
more each, present or not: a verifier then sees an added From, Subject, Reply-To or
List-Unsubscribe (a replayed message with a new one) as a broken signature.

The key comes from a Prefect Secret block (``dkim.key_block``) or, for local use, a PEM file
inside the campaign folder (``dkim.key_file``, confined like every campaign file). A PEM private
key (PKCS#8 or PKCS#1, unencrypted) or, for Ed25519, the base64 of the 32-byte seed (dkimpy's
``dknewkey`` format).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mailcast.errors import DkimError, SpecError
from mailcast.spec import CampaignSpec, DkimSpec

MIN_RSA_BITS = 1024  # RFC 8301: verifiers must not accept smaller keys; 2048 recommended
# Listed once more than they occur: nobody can add one without breaking the signature.
OVERSIGNED = (
    b"from", b"to", b"cc", b"subject", b"reply-to", b"date", b"message-id", b"mime-version",
    b"content-type", b"content-transfer-encoding", b"list-unsubscribe", b"list-unsubscribe-post",
)  # fmt: skip
NEVER_SIGNED = frozenset({b"dkim-signature", b"received", b"return-path"})
_WSP = re.compile(rb"[ \t]{2,}|\t")  # runs to collapse (a single space stays as it is)
_FOLD = 74  # tag lines of the DKIM-Signature header stay under 78 characters


# -- canonicalization (RFC 6376 §3.4.2, §3.4.4) ---------------------------------------------


def relaxed_header(field: bytes) -> bytes:
    """``name:value\\r\\n`` of one header field (its raw lines, CRLF-terminated or not): the
    name lower-cased, the value unfolded, whitespace runs as one space, none at either end."""
    name, _, value = field.partition(b":")
    value = value.replace(b"\r\n", b"")
    if b"\t" in value or b"  " in value:
        value = _WSP.sub(b" ", value)
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" ") + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """The canonical body: whitespace runs as one space, none at the end of a line, no empty
    lines at the end; a non-empty body ends with CRLF, an empty one is empty."""
    if b"\t" in body or b"  " in body:
        body = _WSP.sub(b" ", body)
    if b" \r\n" in body:
        body = body.replace(b" \r\n", b"\r\n")
    end = len(body)
    while end >= 2 and body[end - 2 : end] == b"\r\n":
        end -= 2
    if end == 0:
        return b""
    return body[:end] + b"\r\n" if end != len(body) - 2 else body


def canonical_headers(head: bytes) -> tuple[list[bytes], dict[bytes, list[bytes]]]:
    """The header block's field names (lower case, in order) and, per name, the relaxed
    canonical form of each instance, top to bottom. One pass: unfold, collapse whitespace,
    then split into fields."""
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
    if b"\t" in unfolded or b"  " in unfolded:
        unfolded = _WSP.sub(b" ", unfolded)
    names: list[bytes] = []
    fields: dict[bytes, list[bytes]] = {}
    for line in unfolded.split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        name = name.rstrip(b" ").lower()
        if name in NEVER_SIGNED:
            continue
        names.append(name)
        canonical = name + b":" + value.strip(b" ") + b"\r\n"
        if name in fields:
            fields[name].append(canonical)
        else:
            fields[name] = [canonical]
    return names, fields


# -- keys -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DkimKey:
    """A parsed private key: its algorithm (``rsa-sha256``/``ed25519-sha256``) and size."""

    key: Any  # rsa.RSAPrivateKey or ed25519.Ed25519PrivateKey
    algorithm: str
    bits: int

    @property
    def key_type(self) -> str:
        return "rsa" if self.algorithm == "rsa-sha256" else "ed25519"

    def public_bytes(self) -> bytes:
        """The ``p=`` of the DNS record, decoded: SubjectPublicKeyInfo DER (RSA) or the raw
        32-byte key (Ed25519, RFC 8463)."""
        public = self.key.public_key()
        if self.key_type == "rsa":
            return public.public_bytes(  # type: ignore[no-any-return]
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return public.public_bytes(  # type: ignore[no-any-return]
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def record(self) -> str:
        """The TXT record to publish at ``SELECTOR._domainkey.DOMAIN``."""
        p = base64.b64encode(self.public_bytes()).decode("ascii")
        return f"v=DKIM1; k={self.key_type}; p={p}"

    def describe(self) -> str:
        return f"{self.algorithm}, {self.bits}-bit" if self.key_type == "rsa" else self.algorithm


def parse_key(data: bytes, where: str) -> DkimKey:
    """A private key from PEM (PKCS#8 or PKCS#1, unencrypted) or an Ed25519 seed in base64.
    Raises DkimError naming ``where`` for anything else (an RSA key under 1024 bits, an
    encrypted key, another key type)."""
    text = data.strip()
    key: Any
    if b"-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text, password=None)
        except TypeError:
            raise DkimError(
                "the private key is encrypted", where=where,
                hint="store it without a passphrase (`openssl pkey -in KEY -out PLAIN`)",
            ) from None  # fmt: skip
        except Exception as exc:  # ValueError, UnsupportedAlgorithm
            raise DkimError(f"not a usable PEM private key ({exc})", where=where) from None
    else:
        try:
            seed = base64.b64decode(text, validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise DkimError(
                "not a PEM private key (-----BEGIN PRIVATE KEY-----) nor an Ed25519 seed",
                where=where,
            )
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimError(
                f"the RSA key has {key.key_size} bits; verifiers refuse keys under {MIN_RSA_BITS}",
                where=where,
                hint="make a 2048-bit key: `openssl genpkey -algorithm RSA -pkeyopt"
                " rsa_keygen_bits:2048 -out dkim.pem`",
            )
        return DkimKey(key, "rsa-sha256", key.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return DkimKey(key, "ed25519-sha256", 256)
    raise DkimError(
        f"a {type(key).__name__.removeprefix('_')} cannot sign DKIM: use RSA or Ed25519",
        where=where,
    )


def read_key(spec: CampaignSpec) -> tuple[DkimKey, str]:
    """The campaign's private key, parsed, and where it came from (for messages). The file is
    confined to the campaign folder; a block is read through Prefect (imported only then)."""
    dkim = spec.dkim
    if dkim is None:
        raise SpecError("the campaign has no `dkim` section", where="dkim")
    if dkim.key_file:
        where = f"dkim.key_file {dkim.key_file}"
        path = spec.campaign_file(dkim.key_file, field="dkim.key_file", error=DkimError)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DkimError(f"cannot read the key: {exc.strerror or exc}", where=where) from None
        return parse_key(data, where), where
    where = f"Secret block {dkim.key_block!r}"
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(str(dkim.key_block)).get()  # type: ignore[union-attr]
    except Exception as exc:
        raise DkimError(
            f"cannot load the Prefect Secret block: {type(exc).__name__}: {exc}", where=where
        ) from None
    return parse_key(str(value).encode("utf-8"), where), where


def signing_domain(spec: CampaignSpec) -> str:
    """``d=``: ``dkim.domain``, else the sender's domain."""
    assert spec.dkim is not None
    if spec.dkim.domain:
        return spec.dkim.domain
    from email.utils import parseaddr

    return parseaddr(spec.sender)[1].rpartition("@")[2].lower()


# -- signing ----------------------------------------------------------------------------------


class DkimSigner:
    """``signer(message) -> message`` with a DKIM-Signature header first. Thread-safe."""

    def __init__(self, key: DkimKey, domain: str, selector: str) -> None:
        self.key = key
        self.domain = domain
        self.selector = selector
        self._head = (
            f"DKIM-Signature: v=1; a={key.algorithm}; c=relaxed/relaxed; d={domain};\r\n"
            f" s={selector}; t="
        ).encode("ascii")
        self._sign = self._rsa if key.key_type == "rsa" else self._ed25519
        self._names: dict[tuple[bytes, ...], tuple[list[bytes], bytes]] = {}

    def _rsa(self, data: bytes) -> bytes:
        return self.key.key.sign(data, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[no-any-return]

    def _ed25519(self, data: bytes) -> bytes:
        # RFC 8463: PureEdDSA over the SHA-256 hash of the canonical data
        return self.key.key.sign(hashlib.sha256(data).digest())  # type: ignore[no-any-return]

    def __call__(self, message: bytes) -> bytes:
        split = message.find(b"\r\n\r\n")
        if split < 0:  # no body: the header block is the whole message
            head, body = message, b""
        else:
            head, body = message[: split + 2], message[split + 4 :]
        names, fields = canonical_headers(head)
        key = tuple(names)
        listed = self._names.get(key)
        if listed is None:  # the same few header lists, message after message
            every = names + list(OVERSIGNED)
            listed = self._names[key] = (every, _fold_names(every))
        # RFC 6376 §5.4.2: a name listed again takes the next instance up; none once used up
        signed = b"".join([fields[name].pop() for name in listed[0] if fields.get(name)])
        bh = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        sig_head = b"".join(
            (self._head, str(int(time.time())).encode("ascii"), b";\r\n h=", listed[1],
             b";\r\n bh=", bh, b";\r\n b=")
        )  # fmt: skip
        signature = base64.b64encode(self._sign(signed + relaxed_header(sig_head)[:-2]))
        lines = [signature[i : i + 76] for i in range(0, len(signature), 76)]
        return sig_head + b"\r\n ".join(lines) + b"\r\n" + message


def _fold_names(names: list[bytes]) -> bytes:
    lines: list[bytes] = []
    current = b""
    for name in names:
        if current and len(current) + len(name) + 1 > _FOLD:
            lines.append(current + b":")
            current = name
        else:
            current = current + b":" + name if current else name
    lines.append(current)
    return b"\r\n ".join(lines)


def signer_for(spec: CampaignSpec) -> DkimSigner | None:
    """The campaign's signer (its key read and parsed now), or None without ``dkim``."""
    if spec.dkim is None:
        return None
    key, _where = read_key(spec)
    return DkimSigner(key, signing_domain(spec), spec.dkim.selector)


def describe(spec: CampaignSpec, *, load: bool = False) -> str:
    """One line for ``mailcast validate`` about a signed campaign: d=, s= and the key (read
    only when ``load``, or when it is a file)."""
    dkim: DkimSpec | None = spec.dkim
    assert dkim is not None
    line = f"DKIM: signed d={signing_domain(spec)} s={dkim.selector}"
    if dkim.key_file or load:
        key, where = read_key(spec)
        return f"{line} ({key.describe()} key from {where})"
    return f"{line} (key in Secret block {dkim.key_block!r}, read when sending)"
