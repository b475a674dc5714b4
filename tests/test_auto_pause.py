"""Issue 15: a run pauses itself when its hard-bounce rate (over a sending process's last 1,000
attempts) or its complaint rate passes the campaign's limit, with the reason; `mailcast resume`
continues once the operator has decided."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mailcast.engine.control import BOUNCE_SAMPLE, COMPLAINT_EVERY, RunControl
from mailcast.errors import RunStopped
from mailcast.ledger.store import Ledger
from tests.campaigns import people, write_campaign
from tests.smtp_faults import FaultyServer, Rule


def _attempts(control: RunControl, n: int, every: int) -> None:
    """``n`` attempts, each ``every``-th a hard bounce."""
    for i in range(1, n + 1):
        if i % every == 0:
            control.attempted(hard_bounce=True, run_id="r1")
        else:
            control.succeeded("r1")


def test_hard_bounces_over_the_limit_pause_the_run_once_enough_attempts_were_made() -> None:
    control = RunControl(max_hard_bounce_rate=0.05)
    _attempts(control, BOUNCE_SAMPLE - 1, every=10)  # 10 %, but too few attempts to judge
    assert control.stopped is None
    _attempts(control, 10, every=10)
    error = control.stopped
    assert isinstance(error, RunStopped)
    assert "hard bounces were 9.5% of the last 200 attempts" in error.message  # 19 of 200
    assert "mailcast resume r1" in (error.hint or "")


def test_a_bounce_rate_under_the_limit_or_no_limit_never_pauses() -> None:
    under = RunControl(max_hard_bounce_rate=0.05)
    _attempts(under, 3000, every=25)  # 4 %
    assert under.stopped is None
    off = RunControl(max_hard_bounce_rate=0)
    _attempts(off, 3000, every=2)  # 50 %, but no limit
    assert off.stopped is None


def test_only_the_last_thousand_attempts_count() -> None:
    control = RunControl(max_hard_bounce_rate=0.05)
    _attempts(control, 1000, every=25)  # 4 %
    _attempts(control, 1000, every=1000)  # 0.1 %: the early bounces leave the window
    assert control.stopped is None
    _attempts(control, 400, every=5)  # 20 % now: 80 in the last 1,000 → 8 %
    assert control.stopped is not None


def test_complaints_over_the_limit_pause_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import mailcast.engine.control as control_module

    clock = [1000.0]
    monkeypatch.setattr(control_module.time, "monotonic", lambda: clock[0])
    control = RunControl(max_complaint_rate=0.003)
    counts = [(2, 1000)]
    control.complaint_counts = lambda: counts[0]
    control.succeeded("r1")
    clock[0] += COMPLAINT_EVERY
    control.succeeded("r1")
    assert control.stopped is None  # 0.2 %
    counts[0] = (5, 1200)
    control.succeeded("r1")
    assert control.stopped is None  # not looked again yet
    clock[0] += COMPLAINT_EVERY
    control.succeeded("r1")
    error = control.stopped
    assert isinstance(error, RunStopped)
    assert "5 spam complaints for 1,200 messages sent" in error.message


@pytest.mark.usefixtures("prefect_harness")
def test_a_server_that_hard_bounces_one_in_ten_pauses_the_run(tmp_path: Path) -> None:
    """Acceptance (issue 15, 3.): 10 % of the recipients are refused at RCPT with 550 5.1.1;
    the run pauses itself with the reason, the rest stays pending; `mailcast resume` with the
    limit raised sends everyone else, nobody twice."""
    from mailcast.cli import app

    n = 1000
    rows = people(n)
    bad = {r["email"] for i, r in enumerate(rows) if i % 10 == 3}
    rules = [Rule("RCPT", reply="550 5.1.1 No such user", address=a) for a in sorted(bad)]
    db = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    spec = write_campaign(
        tmp_path, rows, attachments=False,
        spec_extra={"chunk_size": 250, "connections": 2, "pause_after_failures": 0},
    )  # fmt: skip
    runner = CliRunner()
    with FaultyServer(*rules) as server:
        result = runner.invoke(app, ["send", str(spec), "--send", "--smtp", server.url, "--db", db])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        error, hint = result.stderr.strip().splitlines()[-2:]
        assert "the run paused itself: hard bounces were" in error, result.stderr
        assert "(max_hard_bounce_rate 5.0%)" in error
        ledger = Ledger(db)
        run_id = ledger.runs()[0].id
        assert f"mailcast resume {run_id}" in hint
        assert ledger.run(run_id).status == "paused"
        counts = ledger.counts(run_id)
        assert counts["pending"] > 0  # paused early: most of the list not sent
        assert counts["sent"] + counts["failed"] < n

        # Resumed as it was, the run pauses again: the bounces go on.
        ledger.engine.dispose()
        same = runner.invoke(app, ["resume", run_id, "--smtp", server.url, "--db", db])
        assert same.exit_code == 2 and "hard bounces were" in same.stderr, same.output
        # The operator decides the list is fine after all: a higher limit for this run.
        again = runner.invoke(
            app,
            ["resume", run_id, "--smtp", server.url, "--db", db, "--max-hard-bounce-rate", "0.2"],
        )
        assert again.exit_code == 0, again.output
        received = [m.rcpt_tos[0] for m in server.messages]
    final = Ledger(db).counts(run_id)
    assert final["sent"] == n - len(bad) == len(received) == len(set(received))
    assert final["failed"] == len(bad)
    assert Ledger(db).run(run_id).spec["max_hard_bounce_rate"] == 0.2  # kept for later resumes
