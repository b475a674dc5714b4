"""End to end, the way an operator deploys mailcast: a real Prefect server and a real process
worker on 127.0.0.1, ``prefect deploy --all`` reading the repository's prefect.yaml, then:

- a run of the ``send-campaign`` deployment triggered from the CLI (a dry run: .eml files);
- a short interval schedule on it that the server's scheduler turns into a run, which the worker
  sends over SMTP to a capturing server on loopback (SQLAlchemy 2.1 broke Prefect 3.8's
  scheduler: no scheduled run was ever created);
- a run of ``process-bounces`` on an install without a bounce mailbox: Completed, saying so.

One server, one deploy and one worker serve the whole module (the server takes 15–30 s to
start). Everything Prefect keeps (PREFECT_HOME, its SQLite database) and everything the flows
write (the ledger, the outbox) lives in the module's tmp dir. Each process's output goes to a
file there; on a failure the tails are printed. The server and worker are started in their own
process groups and always killed, together with any flow-run process the worker started.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mailcast.capture import CaptureServer
from mailcast.ledger.store import Ledger

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "send-campaign/send-campaign"  # <flow name>/<deployment name>
BOUNCES = "process-bounces/process-bounces"
POOL = "mailcast"
SERVER_START_TIMEOUT = 120.0
RUN_TIMEOUT = 240.0
MARKER = "MAILCAST_E2E_MARKER"  # set in every process the test starts, to find leftovers
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The scheduler's main loop runs every 60 s by default, the one for recently changed deployments
# every 5 s: both much shorter here, so a schedule fires within seconds.
FAST_SCHEDULER = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
}
# The test schedule: every SCHEDULE_INTERVAL s from SCHEDULE_LEAD s after it is created (only
# one run falls inside the test); a scheduled run must be created and complete within this.
SCHEDULE_INTERVAL = 120
SCHEDULE_LEAD = 6
SCHEDULED_RUN_TIMEOUT = 150.0
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The example campaign: 10 rows, one duplicate (ken@) and one invalid address → 8 messages.
EXPECTED_NAMES = {"Ada", "Grace", "Linus", "Zoë", "Ken", "Barbara", "Margaret", "Edsger"}
# Failures seen before, recognised in a command's output, with what they mean.
KNOWN_PROBLEMS = {
    "'input': None}, {'type': 'int_type', 'loc': ['body', 'offset']": (
        "FastAPI >= 0.151 no longer treats a JSON null body field as missing; Prefect 3.8.8's "
        "client sends limit/offset null (read_workers_for_work_pool at the end of `prefect "
        "deploy`, and other list calls) and its server answers 422. Install fastapi < 0.151."
    ),
    "Can't evaluate bulk DML statement": (
        "SQLAlchemy 2.1 breaks Prefect 3.8's scheduler service: it fails on every loop and no "
        "scheduled run is ever created. Install sqlalchemy < 2.1 (pyproject.toml bounds it)."
    ),
    "('required' was unexpected)": (
        "Prefect's server strips every key named 'required' from the parameter schema when it "
        "checks a deployment's parameters; so no campaign field may be named 'required'."
    ),
}


def _prefect_cli() -> list[str]:
    """The ``prefect`` command of the interpreter running the tests (the project's venv)."""
    script = Path(sys.executable).parent / "prefect"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from prefect.cli import app; app()"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 80, width: int = 600) -> str:
    """The last lines of a log, each cut to ``width`` characters (Prefect's 422 errors echo the
    whole request body on one line)."""
    if not path.exists():
        return f"--- {path.name}: (no output file) ---"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    text = [line if len(line) <= width else line[:width] + " [...]" for line in text]
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc; empty elsewhere). A process worker starts
    flow runs in their own session, so killing the worker's group alone could leave them."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _process_groups(pid: int) -> set[int]:
    """The process groups of ``pid`` and of all its descendants."""
    groups = set()
    for each in (pid, *_descendants(pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(each))
    return groups


def _marked(token: str) -> list[int]:
    """Processes whose environment carries this test's marker: every process the test started,
    however it was detached or re-parented (Linux /proc; empty elsewhere)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return [pid for pid in found if pid != os.getpid()]


def _signal_groups(groups: set[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


@dataclass
class Service:
    """A long-running CLI process (server or worker) in its own process group."""

    name: str
    log: Path
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, name: str, args: list[str], env: dict[str, str], logs: Path) -> Service:
        log = logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*_prefect_cli(), *args],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, log, proc)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM its process groups (its own and any a child started), then SIGKILL them."""
        groups = _process_groups(self.proc.pid) | {self.proc.pid}  # pid == pgid: own session
        _signal_groups(groups, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        _signal_groups(groups, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process we cannot reap
            print(f"{self.name} (pid {self.proc.pid}) did not exit after SIGKILL")


@dataclass
class Stack:
    """The live Prefect server plus everything needed to talk to it."""

    api_url: str
    env: dict[str, str]
    tmp: Path
    services: list[Service] = field(default_factory=list)

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    def cli(self, *args: str, name: str, timeout: float = 120) -> str:
        """Run a one-shot ``prefect`` command from the repo root; its output, or fail."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            try:
                done = subprocess.run(
                    [*_prefect_cli(), *args],
                    cwd=REPO,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                self.dump()
                pytest.fail(f"`prefect {' '.join(args)}` took over {timeout:.0f} s")
        if done.returncode != 0:
            self.dump()
            output = log.read_text(errors="replace")
            hints = [hint for sign, hint in KNOWN_PROBLEMS.items() if sign in output]
            pytest.fail(
                f"`prefect {' '.join(args)}` exited {done.returncode}:\n{_tail(log, 40)}"
                + "".join(f"\nHINT: {hint}" for hint in hints)
            )
        return log.read_text(errors="replace")

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        # A busy Prefect server answers 503 when its own database is locked; Prefect's client
        # retries those, and so does this one.
        for wait in (1, 2, 4, 8, 0):
            response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            if response.status_code not in (502, 503) or not wait:
                break
            time.sleep(wait)
        response.raise_for_status()
        return response.json() if response.content else None

    def dump(self) -> None:
        """Print the tail of every log (server, worker, CLI commands) for the failure report."""
        for log in sorted(self.logs.glob("*.log")):
            print(_tail(log), file=sys.stderr)


def _base_env(tmp: Path, api_url: str, token: str) -> dict[str, str]:
    """The caller's environment without any PREFECT_/MAILCAST_ setting (a developer's profile or
    API key must not leak in), plus an isolated PREFECT_HOME and the local API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MAILCAST_"))}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),  # profiles and the server's SQLite DB
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",  # not needed here; skips building the UI into PREFECT_HOME
        PREFECT_CLI_COLORS="false",
        PREFECT_CLI_WRAP_LINES="false",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    env[MARKER] = token
    return env


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A ``prefect server start`` on a free loopback port (its scheduler looping every few
    seconds), healthy, with the work pool created. Stops the server and any service a test
    added (the worker) afterwards."""
    tmp_path = tmp_path_factory.mktemp("prefect-e2e")
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    token = uuid.uuid4().hex
    stack = Stack(api_url=api_url, env=_base_env(tmp_path, api_url, token), tmp=tmp_path)
    stack.logs.mkdir()
    server = Service.start(
        "server",
        ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
        {**stack.env, **FAST_SCHEDULER},
        stack.logs,
    )
    stack.services.append(server)
    try:
        started = time.monotonic()
        while True:
            if not server.alive():
                stack.dump()
                pytest.fail(f"prefect server exited with {server.proc.returncode} while starting")
            try:
                if httpx.get(f"{api_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > SERVER_START_TIMEOUT:
                stack.dump()
                pytest.fail(f"prefect server not healthy after {SERVER_START_TIMEOUT:.0f} s")
            time.sleep(0.5)
        print(f"\nprefect server healthy after {time.monotonic() - started:.1f} s at {api_url}")
        stack.cli("work-pool", "create", POOL, "--type", "process", name="work-pool-create")
        yield stack
    finally:
        for service in reversed(stack.services):
            service.stop()
        if leftovers := _marked(token):
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            print(f"killed processes left behind by the server or worker: {leftovers}")


@dataclass
class Deployed:
    """After ``prefect deploy --all``: its output, a worker on the pool, the capturing SMTP
    server the worker sends to (MAILCAST_SMTP_URL) and the worker's ledger."""

    stack: Stack
    deploy_output: str
    worker: Service
    smtp: CaptureServer
    ledger_url: str
    data_dir: Path


@pytest.fixture(scope="module")
def deployed(stack: Stack) -> Iterator[Deployed]:
    # `prefect deploy --all` from the repository root, exactly as prefect.yaml is written.
    out = stack.cli("--no-prompt", "deploy", "--all", name="deploy")
    data_dir = stack.tmp / "mailcast-data"
    ledger_url = f"sqlite:///{data_dir / 'ledger.sqlite3'}"
    with CaptureServer() as smtp:
        # A process worker on the pool; the flows' ledger and outbox go to tmp, real sends to
        # the capturing server. No bounce mailbox: a fresh install.
        worker_env = {
            **stack.env,
            "MAILCAST_DATA_DIR": str(data_dir),
            "MAILCAST_DATABASE_URL": ledger_url,
            "MAILCAST_SMTP_URL": smtp.url,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        }
        worker = Service.start(
            "worker", ["worker", "start", "--pool", POOL], worker_env, stack.logs
        )
        stack.services.append(worker)
        yield Deployed(stack, out, worker, smtp, ledger_url, data_dir)


def _run_deployment(stack: Stack, name: str, params: dict[str, Any] | None, log: str) -> str:
    """``prefect deployment run NAME``, as an operator would; the new flow run's id."""
    args = ["deployment", "run", name]
    if params is not None:
        args += ["--params", json.dumps(params)]
    out = stack.cli(*args, name=log)
    ids = UUID_RE.findall(out)
    assert ids, out
    run = stack.api("GET", f"/flow_runs/{ids[0]}")
    return str(run["id"])


def _ledger_run(ledger_url: str, run_id: str) -> tuple[Any, dict[str, int]]:
    """The ledger's run ``run_id`` (a flow run's id is its ledger run's id) and its counts."""
    ledger = Ledger(ledger_url)
    try:
        runs = {info.id: info for info in ledger.runs()}
        assert run_id in runs, (run_id, sorted(runs))
        return runs[run_id], ledger.counts(run_id)
    finally:
        ledger.engine.dispose()


def _wait_for_flow_run(stack: Stack, worker: Service, flow_run_id: str) -> dict[str, Any]:
    started = time.monotonic()
    last = None
    while time.monotonic() - started < RUN_TIMEOUT:
        run = stack.api("GET", f"/flow_runs/{flow_run_id}")
        state = (run.get("state") or {}).get("type")
        if state != last:
            print(f"flow run {flow_run_id}: {state} after {time.monotonic() - started:.1f} s")
            last = state
        if state in TERMINAL:
            return dict(run)
        if not worker.alive():
            stack.dump()
            pytest.fail(f"the worker exited with {worker.proc.returncode} (flow run {state})")
        time.sleep(1)
    stack.dump()
    pytest.fail(f"flow run {flow_run_id} still {last} after {RUN_TIMEOUT:.0f} s")


def _wait_for_scheduled_run(
    stack: Stack, worker: Service, deployment_id: str, schedule_id: str
) -> dict[str, Any]:
    """The first flow run the scheduler created for this schedule, once it has started (or
    ended); fails with the server's log when none comes."""
    started = time.monotonic()
    seen = None
    while time.monotonic() - started < SCHEDULED_RUN_TIMEOUT:
        runs = stack.api(
            "POST",
            "/flow_runs/filter",
            json={"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_ASC"},
        )
        mine = [r for r in runs if r.get("auto_scheduled")]
        if mine and seen is None:
            seen = mine[0]
            print(f"scheduled run {seen['id']} created after {time.monotonic() - started:.1f} s")
        for run in mine:
            if (run.get("state") or {}).get("type") not in (None, "SCHEDULED"):
                return dict(run)
        if not worker.alive():
            stack.dump()
            pytest.fail(f"the worker exited with {worker.proc.returncode}")
        time.sleep(1)
    stack.dump()
    what = "was created but never started" if seen else "was ever created by the scheduler"
    server_log = (stack.logs / "server.log").read_text(errors="replace")
    hints = [hint for sign, hint in KNOWN_PROBLEMS.items() if sign in server_log]
    pytest.fail(
        f"no scheduled run {what} in {SCHEDULED_RUN_TIMEOUT:.0f} s (schedule {schedule_id});"
        " see the server's log (scheduler errors) above"
        + "".join(f"\nHINT: {hint}" for hint in hints)
    )


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_prefect_deploy_all_then_a_worker_runs_the_campaign(deployed: Deployed) -> None:
    started = time.monotonic()
    stack, worker = deployed.stack, deployed.worker

    # 1. What `prefect deploy --all` registered.
    out = deployed.deploy_output
    assert f"Deployment '{DEPLOYMENT}' successfully created" in out, out
    # --all registers every deployment in the file (it stops at the first one that fails).
    registered = {d["name"] for d in stack.api("POST", "/deployments/filter", json={})}
    in_file = {
        d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    assert registered == in_file, (registered, in_file)
    deployment = stack.api("GET", f"/deployments/name/{DEPLOYMENT}")
    assert deployment["work_pool_name"] == POOL
    assert deployment["entrypoint"] == "flows/campaign.py:send_campaign"
    assert deployment["parameters"]["dry_run"] is True
    # Prefect templates prefect.yaml with its own {{ placeholder }} syntax: the campaign's
    # Jinja subject must reach the server intact, not as ", our spring picks".
    spec = deployment["parameters"]["spec"]
    assert "first_name" in spec["subject"], (
        f"subject mangled by prefect deploy: {spec['subject']!r}"
    )
    assert spec["recipients"]["required_columns"] == ["first_name"], spec["recipients"]
    # pull: null → prefect deploy records "run from the directory I was run in".
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ], deployment["pull_steps"]
    shipped = [s for s in deployment["schedules"] if s["schedule"].get("cron")]
    [schedule] = shipped
    assert schedule["schedule"]["cron"] == "0 9 * * 1"
    assert schedule["schedule"]["timezone"] == "Europe/London"
    assert schedule["active"] is False

    # 2. Trigger a run the way an operator would.
    flow_run_id = _run_deployment(stack, DEPLOYMENT, {"dry_run": True}, "run")
    run = _wait_for_flow_run(stack, worker, flow_run_id)
    if run["state"]["type"] != "COMPLETED":
        stack.dump()
    assert run["state"]["type"] == "COMPLETED", run["state"]

    # 3. What the user sees: a dry run in the ledger, 8 sent and 2 skipped, 8 .eml files.
    info, counts = _ledger_run(deployed.ledger_url, flow_run_id)
    assert info.campaign == "spring-newsletter"
    assert info.dry_run is True
    assert counts["sent"] == 8, counts
    assert counts["skipped"] == 2, counts
    assert sum(counts.values()) == 10, counts

    outbox = deployed.data_dir / "outbox" / info.id
    emls = sorted(outbox.glob("*.eml"))
    assert len(emls) == 8, sorted(p.name for p in outbox.iterdir()) if outbox.exists() else outbox
    subjects = set()
    for path in emls:
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        subjects.add(str(message["Subject"]))
    assert subjects == {f"{name}, our spring picks" for name in EXPECTED_NAMES}, subjects
    print(f"deploy → run → COMPLETED and checked in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_scheduled_run_sends_the_campaign(deployed: Deployed) -> None:
    """An interval schedule on send-campaign (a real send): the server's scheduler creates the
    run, the worker runs it, its 8 messages arrive at the SMTP server. Nobody triggers it."""
    started = time.monotonic()
    stack, worker = deployed.stack, deployed.worker
    deployment = stack.api("GET", f"/deployments/name/{DEPLOYMENT}")
    anchor = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=SCHEDULE_LEAD)
    [schedule] = stack.api(
        "POST",
        f"/deployments/{deployment['id']}/schedules",
        json=[
            {
                "schedule": {
                    "interval": SCHEDULE_INTERVAL,
                    "anchor_date": anchor.isoformat(),
                    "timezone": "UTC",
                },
                "active": True,
                "max_scheduled_runs": 1,
                "parameters": {"dry_run": False},  # SMTP: the worker's MAILCAST_SMTP_URL
            }
        ],
    )
    try:
        scheduled = _wait_for_scheduled_run(stack, worker, deployment["id"], schedule["id"])
    finally:  # the next runs of this schedule are not the test's business
        with contextlib.suppress(httpx.HTTPError):
            stack.api("DELETE", f"/deployments/{deployment['id']}/schedules/{schedule['id']}")
    run = _wait_for_flow_run(stack, worker, scheduled["id"])
    if run["state"]["type"] != "COMPLETED":
        stack.dump()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["auto_scheduled"] is True, run
    assert run["parameters"]["dry_run"] is False, run["parameters"]
    expected = datetime.fromisoformat(run["expected_start_time"])
    assert abs((expected - anchor).total_seconds()) < 1, (expected, anchor)

    # What the recipients and the ledger see: 8 messages of this run over SMTP, 2 skipped.
    info, counts = _ledger_run(deployed.ledger_url, run["id"])
    assert info.dry_run is False
    assert (counts["sent"], counts["skipped"], sum(counts.values())) == (8, 2, 10), counts
    mine = [
        m
        for m in deployed.smtp.messages
        if str(m.message()["Message-ID"]).startswith(f"<{run['id']}.")
    ]
    assert len(mine) == 8, [str(m.message()["Message-ID"]) for m in deployed.smtp.messages]
    subjects = {str(m.message()["Subject"]) for m in mine}
    assert subjects == {f"{name}, our spring picks" for name in EXPECTED_NAMES}, subjects
    print(f"schedule → scheduled run → 8 messages in {time.monotonic() - started:.1f} s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_process_bounces_without_a_mailbox_completes_and_says_so(deployed: Deployed) -> None:
    """A fresh install has no bounce mailbox: the 15-minute process-bounces run must not fail
    every time; it completes and names the settings to set."""
    stack, worker = deployed.stack, deployed.worker
    deployment = stack.api("GET", f"/deployments/name/{BOUNCES}")
    [schedule] = deployment["schedules"]
    assert schedule["schedule"]["interval"] == 900
    assert schedule["active"] is True

    flow_run_id = _run_deployment(stack, BOUNCES, None, "run-bounces")
    run = _wait_for_flow_run(stack, worker, flow_run_id)
    if run["state"]["type"] != "COMPLETED":
        stack.dump()
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert "no bounce mailbox configured" in run["state"]["message"], run["state"]
    assert "MAILCAST_BOUNCE_MAILDIR" in run["state"]["message"], run["state"]
    artifacts = stack.api(
        "POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    [note] = [a for a in artifacts if a["key"] == "bounce-mailbox"]
    assert note["type"] == "markdown", note
    for setting in ("MAILCAST_BOUNCE_MAILDIR", "MAILCAST_BOUNCE_IMAP_URL"):
        assert setting in note["data"], note["data"]
