"""DKIM signing (issue 14): every message of a real send (the engine, SMTP to a capturing server
on loopback) verifies with dkimpy, an independent verifier, against the selector's TXT record
served by a DNS server on 127.0.0.1; RSA-SHA256 (2048-bit) and Ed25519-SHA256; attachments,
non-ASCII subject and bodies, List-Unsubscribe(-Post) signed; random headers and bodies verify
(hypothesis); a changed message does not."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.cli import app
from mailcast.compose.composer import Composer
from mailcast.compose.dkim import DkimSigner, parse_key, relaxed_body, signer_for
from mailcast.errors import DkimError, SpecError
from mailcast.spec import spec_from_dict
from tests.dkim_campaign import (
    DOMAIN,
    SECRET,
    pem,
    publish,
    send,
    signed_campaign,
    signed_names,
    verified,
)
from tests.dnszone import LocalDns

MUST_SIGN = {
    "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
    "reply-to", "list-unsubscribe", "list-unsubscribe-post", "x-campaign", "x-code",
}  # fmt: skip
SMALL_RSA = """\
-----BEGIN PRIVATE KEY-----
MIIBUwIBADANBgkqhkiG9w0BAQEFAASCAT0wggE5AgEAAkEAp6vrlHhZFgeKTAQL
d5owsD00vHRvpCr59cQAQAzAT+mcFx75Sn2TgRPuZWjcA9OUUt414yHTNunhjMMC
2A5ZxwIDAQABAkBN99DtUmVCrDDwFjVq4WVgnqWGOLKtaVqgoQrovcUzoxIaiNo9
SPGbEGTpgOasRo+aslGjpEeoEUEMPiTq8X1BAiEA2B4oLELtxXQIoFNTSGxLoaAh
y5m/rb7A9ZtCEXTgyWcCIQDGnRCZpufxKgztKlIf5q90rsWNSojvw15lrT/Y8RTQ
oQIgdmiXdCC7a3q2mzjsIXsMOSKmQYochhJEYIzPNwdFfbMCIAdX0UBNCnBBJL8z
/FtPlRcUSxuBMPTkXT4XHLAxoZphAiBKTvV5npcgbQU/L7Ga2m3su2ci+IRw1t5m
8sjgjlPrBg==
-----END PRIVATE KEY-----
"""


@pytest.fixture
def dns() -> Any:
    with LocalDns() as server:
        yield server


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_every_message_of_a_real_send_verifies(
    kind: str, tmp_path: Path, dns: LocalDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    spec = signed_campaign(tmp_path / "c", kind, n=24)
    publish(dns, spec)
    db = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    with CaptureServer() as server:
        send(spec, server.url, db)
        received = [m.data for m in server.messages]
    assert len(received) == 24
    for data in received:
        assert verified(data, dns), data[:1500]
        names = signed_names(data)
        assert set(names) >= MUST_SIGN
        for oversigned in ("from", "subject", "reply-to", "list-unsubscribe"):
            assert names.count(oversigned) == 2, names
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert msg["DKIM-Signature"].startswith(
            f"v=1; a={'rsa' if kind == 'rsa' else 'ed25519'}-sha256; c=relaxed/relaxed; d={DOMAIN};"
        )
        assert "Grüße" in msg["Subject"] and msg["List-Unsubscribe-Post"]
        assert [p.get_content_type() for p in msg.walk()][-1] == "application/pdf"
    assert (f"mc1._domainkey.{DOMAIN}", "TXT") in dns.queries


def _tampered(data: bytes) -> list[bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return [
        head + b"\r\n\r\n" + body.replace(b"Hello", b"Hallo", 1),  # the body
        head.replace(b"\r\nSubject:", b"\r\nSubject: Re:", 1) + b"\r\n\r\n" + body,
        head + b"\r\nSubject: a second subject\r\n\r\n" + body,  # an added (oversigned) header
        head + b"\r\nReply-To: thief@attacker.example\r\n\r\n" + body,
        head + b"\r\nList-Unsubscribe: <https://attacker.example/u>\r\n\r\n" + body,
    ]


def test_a_changed_message_does_not_verify(tmp_path: Path, dns: LocalDns) -> None:
    spec = signed_campaign(tmp_path / "c", "ed25519", n=1)
    publish(dns, spec)
    composer = Composer.for_preview(spec, ["email", "first_name", "last_name", "city", "code"])
    data = composer.compose(1, 2, "a@example.com", {"first_name": "Ann", "last_name": "B",
                                                     "city": "Paris", "code": "C1"}).data  # fmt: skip
    assert verified(data, dns)
    for changed in _tampered(data):
        assert not verified(changed, dns)
    # relays may refold headers and add trailing blank lines: relaxed canonicalization holds
    refolded = data.replace(b"\r\nSubject: ", b"\r\nSubject:   \r\n\t ", 1) + b"\r\n\r\n"
    assert verified(refolded, dns)
    # another key published under the selector: refused
    dns.clear(f"mc1._domainkey.{DOMAIN}")
    (tmp_path / "other").mkdir()
    dns.txt(f"mc1._domainkey.{DOMAIN}", parse_key(pem("rsa"), "other").record())
    assert not verified(data, dns)


def test_preview_writes_signed_messages(tmp_path: Path, dns: LocalDns) -> None:
    spec = signed_campaign(tmp_path / "c", "rsa", n=3, tracking_base_url=None)
    publish(dns, spec)
    out = tmp_path / "preview"
    spec_path = Path(spec.base_dir) / "spec.yaml"
    result = CliRunner().invoke(app, ["preview", str(spec_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    emls = sorted(out.glob("*.eml"))
    assert len(emls) == 3
    assert all(verified(p.read_bytes(), dns) for p in emls)
    result = CliRunner().invoke(app, ["validate", str(spec_path)])
    assert result.exit_code == 0, result.output
    assert f"DKIM: signed d={DOMAIN} s=mc1 (rsa-sha256, 2048-bit key from dkim.key_file" in (
        result.output.replace("\n", " ")
    )


# -- random content ------------------------------------------------------------------------

_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFF), min_size=0, max_size=300
)
_LINE = st.text(st.sampled_from(" \t\tab=é.:;-"), min_size=0, max_size=40)


@pytest.fixture
def random_composer(tmp_path: Path) -> tuple[Composer, bytes]:
    folder = tmp_path
    (folder / "dkim.pem").write_bytes(pem("ed25519"))
    spec = spec_from_dict(
        {
            "name": "random",
            "sender": f"Ränd Om <news@{DOMAIN}>",
            "subject": "{{ s }}",
            "text": "{{ b }}",
            "html": "<p>{{ b }}</p>",
            "headers": {"X-Note": "{{ h }}"},
            "recipients": {"path": "r.csv"},
            "dkim": {"selector": "rnd", "domain": DOMAIN, "key_file": "dkim.pem"},
        },
        base_dir=str(folder),
    )
    composer = Composer.for_preview(spec, ["email", "s", "b", "h"])
    signer = composer.signer
    assert isinstance(signer, DkimSigner)
    return composer, signer.key.record().encode()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(subject=_TEXT, body=_TEXT, header=_TEXT)
def test_random_headers_and_bodies_verify(
    random_composer: tuple[Composer, bytes], subject: str, body: str, header: str
) -> None:
    composer, record = random_composer
    fields = {"s": subject or "-", "b": body, "h": header}
    data = composer.compose(7, 2, "to@example.com", fields).data
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(_LINE, min_size=1, max_size=4),
    body_lines=st.lists(_LINE, min_size=0, max_size=8),
    trailing=st.integers(0, 3),
)
def test_raw_whitespace_and_folding_verify(
    values: list[str], body_lines: list[str], trailing: int
) -> None:
    """Messages not made by mailcast's builder: tabs, runs of spaces, folded values, spaces at
    line ends, blank lines at the end of the body (canonicalization against dkimpy's)."""
    key = parse_key(pem("ed25519"), "test")
    head = "From: a@mailcast.example\r\nTo: b@example.com\r\nSubject:" + "\r\n\t".join(values)
    head += "\r\nX-Folded:\t" + "\r\n ".join(values) + " \r\n"
    body = "\r\n".join(body_lines) + "\r\n" * trailing
    data = DkimSigner(key, DOMAIN, "raw")((head + "\r\n" + body).encode("utf-8"))
    record = key.record().encode()
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record)


def test_relaxed_body_edge_cases() -> None:
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b"a  \t b \t\r\n\r\n") == b"a b\r\n"
    assert relaxed_body(b"a") == b"a\r\n"
    assert relaxed_body(b" x\r\n") == b" x\r\n"


# -- configuration ---------------------------------------------------------------------------


def test_the_key_is_confined_and_checked(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    base = {"name": "k", "sender": f"n <n@{DOMAIN}>", "subject": "s", "text": "t",
            "recipients": {"path": "r.csv"}}  # fmt: skip

    def spec(dkim_spec: dict[str, Any]) -> Any:
        return spec_from_dict({**base, "dkim": dkim_spec}, base_dir=str(folder))

    folder.mkdir()
    (tmp_path / "outside.pem").write_bytes(pem("rsa"))
    with pytest.raises(DkimError, match="outside the campaign folder"):
        signer_for(spec({"selector": "s1", "key_file": "../outside.pem"}))
    with pytest.raises(DkimError, match="cannot read"):
        signer_for(spec({"selector": "s1", "key_file": "missing.pem"}))
    (folder / "bad.pem").write_text("not a key")
    with pytest.raises(DkimError, match="not a PEM private key"):
        signer_for(spec({"selector": "s1", "key_file": "bad.pem"}))
    (folder / "small.pem").write_text(SMALL_RSA)  # 512 bits: cryptography makes none so small
    with pytest.raises(DkimError, match="512 bits"):
        signer_for(spec({"selector": "s1", "key_file": "small.pem"}))
    (folder / "ok.pem").write_bytes(pem("ed25519"))
    signer = signer_for(spec({"selector": "S1.Sub", "key_file": "ok.pem"}))
    assert signer is not None and (signer.selector, signer.domain) == ("s1.sub", DOMAIN)
    for bad, message in (
        ({"selector": "s1"}, "exactly one of"),
        ({"selector": "s1", "key_file": "a", "key_block": "b"}, "exactly one of"),
        ({"selector": "bad selector", "key_file": "ok.pem"}, "not a DNS name"),
        ({"selector": "s1", "domain": "-x.example", "key_file": "ok.pem"}, "not a DNS name"),
    ):
        with pytest.raises(SpecError, match=message):
            spec(bad)
