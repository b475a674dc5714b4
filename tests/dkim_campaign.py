"""DKIM test helpers: keys made with ``cryptography`` (2048-bit RSA, Ed25519), a signed campaign
on disk, a real send through the engine (SMTP to a server on loopback), and verification of
every received message with dkimpy (an independent verifier) against a local DNS server."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailcast.engine.chunk import send_chunk
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import prepare_run
from mailcast.spec import CampaignSpec, load_spec
from mailcast.transport.factory import Target
from tests.campaigns import people, write_campaign
from tests.dnszone import LocalDns
from tests.ledger_rows import chunk_ranges

DOMAIN = "mailcast.example"  # the test campaigns' sender domain
SECRET = "dkim-tests-tracking-secret-0123456789"
UNICODE_SUBJECT = "{{ first_name }}, Grüße aus {{ city }} — ✉ {{ code }}"


@functools.cache
def pem(kind: str) -> bytes:
    """A private key (PKCS#8 PEM), made once per test session."""
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def signed_campaign(
    folder: Path, kind: str, n: int = 20, *, selector: str = "mc1", **extra: Any
) -> CampaignSpec:
    """A tracked campaign (List-Unsubscribe, List-Unsubscribe-Post) with a PDF attachment and
    non-ASCII subject and bodies, signed with a ``kind`` key from a file in its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dkim.pem").write_bytes(pem(kind))
    spec = {
        "subject": UNICODE_SUBJECT,
        "tracking_base_url": "https://t.mailcast.example",
        "reply_to": "Hjälp <help@mailcast.example>",
        "headers": {"X-Campaign": "spring", "X-Code": "{{ code }}"},
        "dkim": {"selector": selector, "key_file": "dkim.pem"},
        **extra,
    }
    return load_spec(write_campaign(folder, people(n), spec_extra=spec))


def send(spec: CampaignSpec, smtp_url: str, db: str, threads: int = 2) -> str:
    """Plan and send the campaign over SMTP with the engine (no Prefect); the run id."""
    target = Target(smtp_url=smtp_url)
    run_id = prepare_run(db, spec, target).run_id
    ledger = Ledger(db)
    for bounds in chunk_ranges(ledger, run_id, 1000):
        send_chunk(spec, run_id, bounds, db, target, threads=threads)
    return run_id


def publish(dns: LocalDns, spec: CampaignSpec) -> None:
    """The selector's TXT record, built from the campaign's key (what the README says to do)."""
    from mailcast.compose.dkim import read_key, signing_domain

    assert spec.dkim is not None
    key, _where = read_key(spec)
    dns.txt(f"{spec.dkim.selector}._domainkey.{signing_domain(spec)}", key.record())


def verified(data: bytes, dns: LocalDns) -> bool:
    """dkimpy's verdict on the message's first DKIM-Signature, its key from ``dns``."""
    return bool(dkim.verify(data, dnsfunc=dns.dkim_txt))


def signed_names(data: bytes) -> list[str]:
    """The ``h=`` of the message's DKIM-Signature."""
    sig = dkim.util.parse_tag_value(
        re.search(rb"^DKIM-Signature:(.*?)\r\n(?! )", data, re.S | re.M)[1]  # type: ignore[index]
    )
    return [h.strip().decode() for h in sig[b"h"].split(b":")]
