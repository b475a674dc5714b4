"""`mailcast retry --failed` re-sends only temporary failures; the export-run flow writes the
same report as `mailcast report`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcast.cli import app
from mailcast.ledger.store import Ledger
from mailcast.spec import load_spec
from tests.campaigns import people, write_campaign
from tests.smtp_faults import FaultyServer, Rule

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_retry_failed_resends_only_temporary_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailcast.flows.campaign import send_campaign

    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = load_spec(
        write_campaign(
            tmp_path,
            people(12),
            attachments=False,
            spec_extra={"max_attempts": 2, "retry_base_seconds": 0.05, "connections": 2},
        )
    )
    greylisted = "person3@example.com"
    unknown_user = "person7@example.com"
    with FaultyServer(
        Rule("RCPT", reply="451 4.7.1 Greylisted, try later", address=greylisted),
        Rule("RCPT", reply="550 5.1.1 No such user", address=unknown_user),
    ) as server:
        monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
        summary = send_campaign(spec=spec, dry_run=False, smtp_url=server.url)
        ledger = Ledger(db)
        rows = {r["address"]: r for r in ledger.deliveries(summary.run_id)}
        assert rows[greylisted]["status"] == "failed"
        assert rows[greylisted]["reason"].startswith("temporary")
        assert rows[unknown_user]["status"] == "failed"
        assert rows[unknown_user]["reason"].startswith("hard bounce")
        assert summary.counts["sent"] == 10

        server.rules.clear()  # the greylisting has passed; the unknown user is still unknown
        server.add(Rule("RCPT", reply="550 5.1.1 No such user", address=unknown_user))
        result = CliRunner().invoke(
            app, ["retry", summary.run_id, "--failed", "--smtp", server.url, "--db", db]
        )
        assert result.exit_code == 0, result.output

    copies = Counter(m.rcpt_tos[0] for m in server.messages)
    assert copies[greylisted] == 1  # re-sent once, now accepted
    assert copies[unknown_user] == 0  # a permanent failure is never retried
    assert max(copies.values()) == 1  # nobody already sent got a second copy
    final = {r["address"]: r["status"] for r in ledger.deliveries(summary.run_id)}
    assert final[greylisted] == "sent"
    assert final[unknown_user] == "failed"
    assert Counter(final.values()) == {"sent": 11, "failed": 1}


def test_export_run_flow_writes_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq
    from mailcast.flows.campaign import send_campaign
    from mailcast.flows.export import export_run

    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = load_spec(write_campaign(tmp_path, people(25), attachments=False))
    monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
    summary = send_campaign(spec=spec, dry_run=True, outbox_dir=str(tmp_path / "outbox"))
    out = tmp_path / "export.parquet"
    assert export_run(run_id=summary.run_id, format="parquet", out=str(out)) == str(out)
    table = pq.read_table(out)
    assert table.num_rows == 25
    assert set(table.column("status").to_pylist()) == {"sent"}
