"""The README's first command: `mailcast demo` sends the example campaign over real SMTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MAILCAST = str(Path(sys.executable).parent / "mailcast")


@pytest.mark.slow
def test_demo_sends_the_example_campaign(tmp_path: Path, prefect_harness: None) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "MAILCAST_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("MAILCAST_DATABASE_URL", None)
    done = subprocess.run([MAILCAST, "demo"], env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "completed (sent over SMTP)" in out
    assert "sent 8" in out and "skipped 2" in out
    assert "the SMTP server accepted 8 messages" in out
    assert str(tmp_path / "data" / "ledger.sqlite3") in out  # the CLI says where the ledger is
    captured = sorted((tmp_path / "data" / "demo" / "captured").glob("*.eml"))
    assert len(captured) == 8
