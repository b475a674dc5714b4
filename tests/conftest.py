"""Shared fixtures: real Postgres (a fresh database per test session), SQLite, a real SMTP
server on loopback, and one Prefect test harness per session."""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PG_ADMIN_URL = os.environ.get(
    "MAILCAST_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parents[1]


def _pg_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"Postgres is required in CI (CI=true) but {reason}")
    pytest.skip(f"no Postgres: {reason} (set MAILCAST_TEST_PG, or start it; CI fails instead)")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A new, empty Postgres database for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"mailcast_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        _pg_unavailable(f"{PG_ADMIN_URL}: {str(exc).splitlines()[0]}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from mailcast.ledger import schema

    for key, engine in list(schema._engines.items()):
        if name in key:
            engine.dispose()
            del schema._engines[key]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each ledger test runs on SQLite and on real Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server per session (~20–30 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def smtp_server() -> Iterator[object]:
    """A real SMTP server on loopback that captures every message."""
    from mailcast.capture import CaptureServer

    with CaptureServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's data dir or picks up a developer's MAILCAST_* settings."""
    for key in list(os.environ):
        if key.startswith("MAILCAST_") and key != "MAILCAST_TEST_PG":
            monkeypatch.delenv(key)
    monkeypatch.setenv("MAILCAST_DATA_DIR", str(tmp_path / "data"))
    # Specs built from dicts in tests name their tmp_path as the campaign folder: as an operator
    # would, the suite configures it as a campaign root (tests of the default roots unset it).
    monkeypatch.setenv("MAILCAST_CAMPAIGN_ROOTS", str(tmp_path))


# -- the suite runs on several worker processes (pytest-xdist, `-n 3` in pyproject.toml) -------
# A test marked `serial` runs with no other test at the same time (its figures are timings, or it
# restarts Postgres): a readers-writer lock over two files shared by the workers. Every test holds
# RUNNING shared; a serial test holds it exclusive. A serial test takes GATE first and keeps it
# while it waits, so new tests queue behind it instead of starving it.


_LOCKS: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    # The controller (or a run without xdist) makes the folder; its workers inherit the variable.
    if not hasattr(config, "workerinput"):
        os.environ["PYTEST_MAILCAST_LOCKS"] = tempfile.mkdtemp(prefix="mailcast-test-locks-")
    _LOCKS.append(Path(os.environ["PYTEST_MAILCAST_LOCKS"]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    folder = _LOCKS[0]
    serial = item.get_closest_marker("serial") is not None
    with (folder / "gate").open("a") as gate, (folder / "running").open("a") as running:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(running, fcntl.LOCK_EX if serial else fcntl.LOCK_SH)
        finally:
            if not serial:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            return (yield)
        finally:
            fcntl.flock(running, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


# -- the figures slow end-to-end tests print (chaos counts, soak counts) appear in CI's log ----

_figures: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "slow" in report.keywords:
        text = report.capstdout.strip()
        if text:
            _figures.append((report.nodeid, text))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _figures:
        terminalreporter.section("figures printed by slow tests")
        for nodeid, text in _figures:
            terminalreporter.write_line(nodeid)
            for line in text.splitlines():
                terminalreporter.write_line(f"  {line}")
