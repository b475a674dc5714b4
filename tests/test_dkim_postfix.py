"""DKIM through a real relay (issue 14): a signed campaign sent through a private Postfix on
loopback (which adds its Received header and may re-queue, re-encode or refold what it relays)
to a capturing server verifies for every message, RSA and Ed25519 signatures alike, with
dkimpy against a DNS server on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from mailcast.capture import CaptureServer
from tests.dkim_campaign import SECRET, publish, send, signed_campaign, verified
from tests.dnszone import LocalDns
from tests.postfix_relay import postfix_missing, postfix_relay

N = 30


def test_a_signed_campaign_relayed_by_postfix_verifies_for_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = postfix_missing()
    if missing:
        pytest.skip(f"no private Postfix relay: {missing}")
    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    rsa = signed_campaign(tmp_path / "rsa", "rsa", n=N, selector="pfx-rsa")
    ed = signed_campaign(tmp_path / "ed", "ed25519", n=N, selector="pfx-ed", name="ed-campaign")
    with LocalDns() as dns, CaptureServer() as capture:
        publish(dns, rsa)
        publish(dns, ed)
        with postfix_relay("127.0.0.1", capture.port) as port:
            relay = f"smtp://127.0.0.1:{port}?security=none"
            send(rsa, relay, f"sqlite:///{tmp_path / 'rsa.sqlite3'}")
            send(ed, relay, f"sqlite:///{tmp_path / 'ed.sqlite3'}")
            received = capture.wait_for(2 * N, timeout=60)
        assert len(received) == 2 * N
        for m in received:
            msg = email.message_from_bytes(m.data, policy=email.policy.default)
            assert "relay.mailcast.test" in str(msg["Received"])  # it did pass through Postfix
            assert verified(m.data, dns), m.data[:2000]
        selectors = {str(email.message_from_bytes(m.data)["DKIM-Signature"]).split("s=")[1][:6]
                     for m in received}  # fmt: skip
        assert selectors == {"pfx-rs", "pfx-ed"}
