"""Postfix's ``smtp-sink`` as the receiving end of throughput benchmarks (installed on demand,
non-interactively, from Debian's ``postfix`` package; the Postfix daemon is never started)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

SINK = "/usr/sbin/smtp-sink"


def ensure_postfix_tools() -> str:
    """Install Debian's postfix package if smtp-sink is missing; return the smtp-sink path."""
    if Path(SINK).exists():
        return SINK
    if shutil.which("apt-get") is None:
        raise SystemExit("smtp-sink is missing and apt-get is not available: install postfix")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing postfix (for smtp-sink/smtp-source)…", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env, capture_output=True
    )
    return SINK


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """``smtp-sink`` on 127.0.0.1: accepts and discards every message.

    ``delay`` (whole seconds) delays the reply to the end of DATA, like a slow server.
    """

    def __init__(self, backlog: int = 1024, delay: int = 0) -> None:
        self.port = free_port()
        self.backlog = backlog
        self.delay = delay
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?security=none"

    def __enter__(self) -> Sink:
        args = [ensure_postfix_tools(), "-c"]
        if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
            args += ["-u", "postfix" if _user_exists("postfix") else "nobody"]
        if self.delay:
            args += ["-W", f".:{self.delay}"]
        args += [f"127.0.0.1:{self.port}", str(self.backlog)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
