"""The hand-over journal (crash_window: message, the default): a SIGKILL leaves at most the
message each connection had on the wire in doubt; rows accepted but not yet recorded are
recorded from the journal; rows only reserved are sent on resume; nothing is sent twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailcast.engine import journal
from mailcast.engine.journal import Journal, read_journals
from mailcast.engine.resume import reopen_run
from mailcast.ledger.store import Ledger
from mailcast.recipients.prepare import plan_rows
from mailcast.recipients.sources import read_recipients
from mailcast.recipients.validate import validate_recipients
from mailcast.spec import load_spec
from mailcast.transport.factory import Target
from tests.campaigns import people, write_campaign
from tests.test_resume import SlowServer

pytestmark = pytest.mark.skipif(not journal.boot_id(), reason="the journal needs Linux's boot id")


def test_a_resume_leaves_the_rows_of_a_live_sender_alone(tmp_path: Path, db_url: str) -> None:
    """A resume while a sender of the run is still at work on this machine (two resumes at
    once, a retried task): the live sender's rows stay its own; a dead one's are settled."""
    from mailcast.recipients import Recipient

    ledger = Ledger(db_url)
    run_id = ledger.create_run("c", {}, dry_run=False, transport="test")
    rows = people(6)
    ledger.plan(
        run_id, [Recipient(i + 2, r["email"], r, None, r["email"]) for i, r in enumerate(rows)],
        list(rows[0]),
    )  # fmt: skip
    ids = list(ledger.all_pending_ids(run_id))
    live, dead = journal.new_token(), journal.new_token()
    ledger.claim_ids(run_id, ids[:3], token=live)
    ledger.claim_ids(run_id, ids[3:], token=dead)
    folder = Path(os.environ["MAILCAST_DATA_DIR"]) / "journal"
    working = Journal(folder, run_id, live)
    working.handing_over(ids[0])
    gone = Journal(folder, run_id, dead)
    for i in ids[3:5]:  # accepted, their outcomes not yet in the ledger
        gone.handing_over(i)
        gone.accepted(i, 250, f"<m{i}@x>", None)
    gone.handing_over(ids[5])
    gone.close()
    found = read_journals(folder, run_id)
    assert found[live].live and not found[dead].live
    assert reopen_run(ledger, run_id)["unknown"] == 1  # the dead sender's row on the wire
    status = {r["address"]: r["status"] for r in ledger.deliveries(run_id)}
    assert [status[r["email"]] for r in rows] == ["sending"] * 3 + ["sent", "sent", "unknown"]
    assert [p.name.split(".")[0] for p in (folder / run_id).glob("*.log")] == [live]
    working.close()


def test_after_the_writer_is_gone_the_journal_is_read(tmp_path: Path) -> None:
    token = journal.new_token()
    j = Journal(tmp_path, "run/../1", token)
    j.handing_over(1)
    j.accepted(1, 250, "<m1@example.org>", "provider 1%")
    j.handing_over(2)
    j.refused(2)
    j.handing_over(3)
    j.close()
    found = read_journals(tmp_path, "run/../1")[token]
    assert found.trusted
    assert found.accepted == {1: (250, "<m1@example.org>", "provider 1%")}
    assert found.in_doubt == {3}
    assert all(p.is_relative_to(tmp_path) for p in found.files)


def test_a_committed_batch_is_cut_from_the_journal(tmp_path: Path) -> None:
    token = journal.new_token()
    j = Journal(tmp_path, "r", token)
    for i in range(100):
        j.handing_over(i)
        j.accepted(i, 250, None, None)
    j.committed()
    j.handing_over(100)
    j.close()
    found = read_journals(tmp_path, "r")[token]
    assert found.in_doubt == {100} and not found.accepted
    assert found.files[0].stat().st_size < 200


def test_a_journal_from_before_a_reboot_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = journal.new_token()
    j = Journal(tmp_path, "r", token)
    j.handing_over(1)
    j.close()
    other = tmp_path / "boot_id"
    other.write_text("another-boot\n")
    monkeypatch.setattr(journal, "BOOT_ID", other)
    assert not read_journals(tmp_path, "r")[token].trusted


@settings(deadline=None, max_examples=60)  # each example fsyncs a new journal
@given(st.text(max_size=80), st.text(max_size=80))
def test_any_message_id_and_provider_id_survive_the_journal(mid: str, pid: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        token = journal.new_token()
        j = Journal(Path(tmp), "r", token)
        j.handing_over(7)
        j.accepted(7, 250, mid, pid)
        j.close()
        found = read_journals(Path(tmp), "r")[token]
    assert found.accepted == {7: (250, mid or None, pid or None)}


# -- a real SIGKILL of a sending process ----------------------------------------------------

CHILD = """
import sys
from mailcast.engine.chunk import send_chunk
from mailcast.spec import load_spec
from mailcast.transport.factory import Target
spec = load_spec(sys.argv[1])
send_chunk(spec, sys.argv[2], (0, 10**12), sys.argv[3], Target(smtp_url=sys.argv[4]), threads=3)
"""


def test_sigkill_leaves_at_most_one_row_per_connection_in_doubt(
    tmp_path: Path, db_url: str
) -> None:
    n, connections = 1200, 3
    spec_path = write_campaign(
        tmp_path,
        people(n),
        attachments=False,
        spec_extra={"connections": connections, "chunk_size": 5000},
    )
    spec = load_spec(spec_path)
    assert spec.crash_window == "message"  # the default
    ledger = Ledger(db_url)
    table = validate_recipients(read_recipients(spec.recipients, spec.base_dir), suppressed={})
    with SlowServer() as server:
        run_id = plan_rows(ledger, spec, table.rows, table.columns, Target(smtp_url=server.url))
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(spec_path), run_id, db_url,
             server.url],
            env=env,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(server.messages) < 300 and child.poll() is None:
            assert time.monotonic() < deadline, "the child sent nothing"
            time.sleep(0.01)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        time.sleep(0.3)  # the server takes in what was on the wire
        at_kill = Counter(m.rcpt_tos[0] for m in server.messages)
        before = {r["address"]: r["status"] for r in ledger.deliveries(run_id)}
        sending = {a for a, s in before.items() if s == "sending"}
        assert sending, "the kill must leave rows in flight"
        folder = Path(os.environ["MAILCAST_DATA_DIR"]) / "journal"
        changed = reopen_run(ledger, run_id)
        assert not (folder / run_id).exists()  # settled: the journals are gone
        after = {r["address"]: r for r in ledger.deliveries(run_id)}
        unknown = {a for a, r in after.items() if r["status"] == "unknown"}
        assert changed["unknown"] == len(unknown) <= connections
        # the rows accepted but not yet recorded at the kill are sent, with their Message-ID
        recovered = {a for a in sending if after[a]["status"] == "sent"}
        assert all(after[a]["message_id"] for a in recovered)
        assert recovered <= set(at_kill)
        # the rest of the rows left in flight were only reserved: never at the server
        reserved = sending - unknown - recovered
        print(
            f"at the kill: {sum(at_kill.values())} captured, {len(sending)} rows sending; after"
            f" resume: {len(unknown)} unknown, {len(recovered)} sent from the journal,"
            f" {len(reserved)} reserved (sent now)"
        )
        assert not reserved & set(at_kill)
        # send what is left: everyone gets exactly one copy, except the unknown (0 or 1)
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(spec_path), run_id, db_url,
             server.url],
            env=env,
            timeout=120,
        )  # fmt: skip
        assert child.returncode == 0
        time.sleep(0.2)
        copies = Counter(m.rcpt_tos[0] for m in server.messages)
    final = {r["address"]: r["status"] for r in ledger.deliveries(run_id)}
    assert max(copies.values()) == 1, [a for a, k in copies.items() if k > 1][:5]
    assert {a for a, s in final.items() if s == "sent"} == set(copies) - unknown
    assert Counter(final.values()) == +Counter(sent=n - len(unknown), unknown=len(unknown))
