"""OAuth2 end to end through the CLI, the Prefect flow and saved blocks (a Microsoft 365 OAuth2
block inside the SMTP server block): a campaign sent with XOAUTH2, then a run stopped mid-way by
a revoked refresh token (one line and a hint, nobody failed); and then a search of everything
they left behind for the client secret, the refresh tokens and every access token, as they are
and inside the XOAUTH2 string."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from mailcast.blocks import MicrosoftOAuth2, SmtpServer
from typer.testing import CliRunner

from mailcast.cli import app
from mailcast.ledger.store import Ledger
from mailcast.transport.oauth2 import xoauth2
from tests.campaigns import people, write_campaign
from tests.oauth2_fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    MAILBOX,
    REFRESH_TOKEN,
    TENANT,
    TokenServer,
    XOAuth2Server,
    fresh_tokens,  # noqa: F401 (a fixture)
)
from tests.test_oauth2 import tls  # noqa: F401 (a fixture)
from tests.test_secrets import Everything, all_logs, ledger_dump, prefect_records  # noqa: F401

pytestmark = [
    pytest.mark.usefixtures("prefect_harness", "fresh_tokens"),
    pytest.mark.slow,
]  # two flow runs
runner = CliRunner()


def secret_forms(tokens: TokenServer) -> list[str]:
    secrets = [CLIENT_SECRET, REFRESH_TOKEN, *tokens.every_token]
    xoauth = [base64.b64encode(xoauth2(MAILBOX, s).encode()).decode() for s in secrets]
    return secrets + xoauth + [s[4:-4] for s in secrets]


def test_oauth2_through_the_flow_leaves_no_secret_anywhere(
    tmp_path: Path,
    tls: Any,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    all_logs: Everything,  # noqa: F811
) -> None:
    caplog.set_level(logging.DEBUG)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(
        tmp_path / "c", people(40), attachments=False, spec_extra={"connections": 2}
    )
    texts: list[str] = []
    with TokenServer(tls=tls, rotate=True) as tokens, XOAuth2Server(tokens) as server:
        credentials = MicrosoftOAuth2(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            refresh_token=REFRESH_TOKEN,
            authority_host=tokens.url,
        )
        credentials.save("m365-test", overwrite=True)
        SmtpServer(
            host="127.0.0.1",
            port=server.port,
            security="none",
            username=MAILBOX,
            oauth2=credentials,
        ).save("m365-smtp", overwrite=True)
        loaded = SmtpServer.load("m365-smtp")
        assert isinstance(loaded.oauth2, MicrosoftOAuth2)  # the nested block comes back
        command = ["send", str(spec), "--send", "--smtp-block", "m365-smtp", "--db", db]

        # 1. a campaign sent with XOAUTH2
        sent = runner.invoke(app, command)
        assert sent.exit_code == 0, sent.output
        assert len(server.messages) == 40 and server.auth_ok >= 2
        texts += [sent.output, sent.stderr, sent.stdout]

        # 2. mid-run, the user's sessions are revoked: the next login is refused, the token
        # endpoint refuses the refresh token, the run stops
        tokens.revoke()
        server.per_connection = 5  # connections come back to log in again
        server.invalidate_at_login = server.logins + 4
        before = len(server.messages)
        stopped = runner.invoke(app, command)
        texts += [stopped.output, stopped.stderr, stopped.stdout]
        assert stopped.exit_code != 0, stopped.output
        assert "Traceback" not in stopped.output
        assert "invalid_grant" in stopped.output and "resume" in stopped.output
        assert before < len(server.messages) < 80

    ledger = Ledger(db)
    runs = ledger.runs()
    assert len(runs) == 2
    second = ledger.counts(runs[0].id if runs[0].status != "completed" else runs[1].id)
    assert second["failed"] == 0 and second["unknown"] == 0 and second["pending"] > 0
    texts += ledger_dump(db)
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text, *all_logs.lines]
    texts += prefect_records()

    haystack = "\n".join(texts)
    assert len(all_logs.lines) > 20 and str(server.port) in haystack
    assert len(tokens.every_token) >= 2  # an access token and Microsoft's new refresh token
    for form in secret_forms(tokens):
        assert form not in haystack, f"a secret leaked (as {form!r})"
