"""The SMTP password never shows: a real send and a failing-auth send through the CLI and the
Prefect flow, with a known password, and then a search of everything they left behind: the CLI's
output, every log record (Python logging and the logs stored by Prefect), the Prefect artifacts,
flow and task run parameters and states, every table of the ledger, the reports, and the
exceptions (str, repr, hint, traceback)."""

from __future__ import annotations

import base64
import logging
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, select
from typer.testing import CliRunner

from mailcast.capture import CaptureServer
from mailcast.cli import app
from mailcast.errors import AuthError
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign

pytestmark = pytest.mark.usefixtures("prefect_harness")

PASSWORD = "Qx7-SeCrEt-mailcast-9Kz!"
USER = "mailer"
runner = CliRunner()


def forms(secret: str) -> list[str]:
    """The password as it could leak: as is, URL-quoted, and inside AUTH PLAIN/LOGIN base64."""
    from urllib.parse import quote

    plain = base64.b64encode(f"\0{USER}\0{secret}".encode()).decode()
    login = base64.b64encode(secret.encode()).decode()
    return [secret, quote(secret, safe=""), plain, login, secret[3:-3]]


class Everything(logging.Handler):
    """Every log record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.lines.append(repr(record.args))


@pytest.fixture
def all_logs() -> Iterator[Everything]:
    handler = Everything()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", "mailcast"))]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def prefect_records() -> list[str]:
    """What the Prefect API holds about the runs: flow and task runs (parameters, inputs,
    states), their logs, and every artifact."""
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued logs to the API before reading them
    texts: list[str] = []
    with get_client(sync_client=True) as client:
        for flow_run in client.read_flow_runs(limit=200):
            texts.append(flow_run.model_dump_json())
        for task_run in client.read_task_runs(limit=200):
            texts.append(task_run.model_dump_json())
        for log in client.read_logs(limit=200):
            texts.append(log.model_dump_json())
        for artifact in client.read_artifacts(limit=200):
            texts.append(artifact.model_dump_json())
    assert any("run-summary" in t for t in texts), "no artifact found: the search saw nothing"
    return texts


def ledger_dump(db: str) -> list[str]:
    """Every row of every table of the ledger, as text."""
    engine = create_engine(db)
    meta = MetaData()
    meta.reflect(engine)
    texts = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                texts.append(f"{table.name}: {tuple(row)!r}")
    engine.dispose()
    assert any(t.startswith("deliveries:") for t in texts)
    return texts


def exception_texts(exc: BaseException) -> list[str]:
    return [
        str(exc),
        repr(exc),
        repr(exc.args),
        repr(vars(exc)),
        "".join(traceback.format_exception(exc)),
    ]


def assert_nowhere(secret: str, texts: list[str]) -> None:
    haystack = "\n".join(texts)
    assert haystack.strip()
    for form in forms(secret):
        assert form not in haystack, f"the password leaked (as {form!r})"


def test_password_never_appears_anywhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    all_logs: Everything,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MAILCAST_SMTP_PASSWORD", PASSWORD)
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(tmp_path / "c", people(12), spec_extra={"chunk_size": 5})
    texts: list[str] = []

    # 1. a real send, logging in with the password
    with CaptureServer(username=USER, password=PASSWORD) as server:
        url = f"smtp://{USER}@127.0.0.1:{server.port}?security=none"
        sent = runner.invoke(app, ["send", str(spec), "--send", "--smtp", url, "--db", db])
        assert sent.exit_code == 0, sent.output
        assert len(server.messages) == 12
        texts += [sent.output, sent.stderr, sent.stdout]
        texts += [m.data.decode("utf-8", "replace") for m in server.messages]

    # 2. the server refuses the password: the run stops before any recipient
    with CaptureServer(username=USER, password="the-server-wants-another") as server:
        url = f"smtp://{USER}@127.0.0.1:{server.port}?security=none"
        refused = runner.invoke(app, ["send", str(spec), "--send", "--smtp", url, "--db", db])
        assert refused.exit_code == 2, refused.output
        assert "Traceback" not in refused.output
        error, hint = refused.stderr.strip().splitlines()[-2:]
        assert error == (
            f"error: 127.0.0.1:{server.port}: authentication failed for user {USER}: 535 5.7.8"
            " Authentication credentials invalid"
        )
        assert hint.startswith("hint: check the username and MAILCAST_SMTP_PASSWORD")
        texts += [refused.output, refused.stderr, refused.stdout]

        # the same through the flow directly (a deployment): the exception itself
        from mailcast.flows.campaign import send_campaign

        from mailcast.spec import load_spec

        with pytest.raises(AuthError) as info:
            monkeypatch.setenv("MAILCAST_DATABASE_URL", db)
            send_campaign(spec=load_spec(spec), dry_run=False, smtp_url=url)
        texts += exception_texts(info.value)
        assert server.messages == []

    # 3. what the ledger and its reports hold
    ledger = Ledger(db)
    (run,) = ledger.runs()
    assert run.status == "completed"
    for fmt in ("csv", "json"):
        out = tmp_path / f"report.{fmt}"
        report = runner.invoke(
            app, ["report", run.id, "--format", fmt, "--out", str(out), "--db", db]
        )
        assert report.exit_code == 0, report.output
        texts += [report.output, out.read_text(encoding="utf-8")]
    listing = runner.invoke(app, ["runs", "--db", db])
    texts += [listing.output]
    texts += ledger_dump(db)

    # 4. everything logged, printed and stored by Prefect
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text, *all_logs.lines]
    texts += prefect_records()

    assert len(all_logs.lines) > 20  # the runs did log
    assert_nowhere(PASSWORD, texts)
    # and the search would have found it: the password was really used
    assert any(str(server.port) in t for t in texts)


def test_repr_of_everything_holding_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailcast.transport.factory import Target, make_transport, smtp_config

    monkeypatch.setenv("MAILCAST_SMTP_PASSWORD", PASSWORD)
    target = Target(smtp_url=f"smtp://{USER}@127.0.0.1:2525?security=none")
    config = smtp_config(target)
    transport = make_transport(target)
    values: list[Any] = [target, config, transport, target.model_dump(), target.describe()]
    assert config.password is not None and config.password.get_secret_value() == PASSWORD
    assert_nowhere(PASSWORD, [repr(v) for v in values] + [str(v) for v in values])


def test_a_password_in_the_smtp_url_never_becomes_a_flow_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailcast.cli import without_password

    monkeypatch.delenv("MAILCAST_SMTP_PASSWORD", raising=False)
    url = without_password("smtp://news:s3cr%40t@127.0.0.1:2525?security=none")
    assert url == "smtp://news@127.0.0.1:2525?security=none"
    assert os.environ["MAILCAST_SMTP_PASSWORD"] == "s3cr@t"
    assert without_password("smtp://127.0.0.1:25") == "smtp://127.0.0.1:25"
