"""DKIM with the key in a Prefect Secret block (issue 14): a campaign sent with the CLI through
the send-campaign flow verifies for every message; a missing block stops the run before any
message, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.cli import app
from tests.dkim_campaign import SECRET, pem, signed_campaign, signed_names, verified
from tests.dnszone import LocalDns

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_a_campaign_signed_with_a_secret_block_verifies_for_every_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    monkeypatch.setenv("MAILCAST_TRACKING_SECRET", SECRET)
    Secret(value=pem("rsa").decode()).save("dkim-test-key", overwrite=True)
    spec = signed_campaign(tmp_path / "c", "rsa", n=12, selector="blk")
    spec_path = Path(spec.base_dir) / "spec.yaml"
    text = spec_path.read_text().replace("key_file: dkim.pem", "key_block: dkim-test-key")
    spec_path.write_text(text)
    (tmp_path / "c" / "dkim.pem").unlink()
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    with LocalDns() as dns, CaptureServer() as server:
        from mailcast.compose.dkim import parse_key

        key = parse_key(pem("rsa"), "test")
        dns.txt("blk._domainkey.mailcast.example", key.record())
        runner = CliRunner()
        result = runner.invoke(app, ["validate", str(spec_path)])
        assert result.exit_code == 0, result.output
        assert "key in Secret block 'dkim-test-key'" in result.output
        result = runner.invoke(app, ["send", str(spec_path), "--send", "--smtp", server.url,
                                     "--db", db])  # fmt: skip
        assert result.exit_code == 0, result.output
        received = [m.data for m in server.messages]
        assert len(received) == 12
        assert all(verified(data, dns) for data in received)
        assert "list-unsubscribe-post" in signed_names(received[0])

        text = spec_path.read_text().replace("key_block: dkim-test-key", "key_block: no-such")
        spec_path.write_text(text)
        result = runner.invoke(app, ["send", str(spec_path), "--send", "--smtp", server.url,
                                     "--db", db])  # fmt: skip
        assert result.exit_code == 2
        assert "Secret block 'no-such'" in result.output
        assert "Traceback" not in result.output
        assert len(server.messages) == 12
