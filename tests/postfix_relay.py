"""A private Postfix relay on loopback for tests: its own config directory, queue and data
directory under a new temporary folder, ``inet_interfaces = loopback-only``, smtpd on a free
port of 127.0.0.1, relaying every message to ``relayhost`` (a capturing server). The master
runs in the foreground (``postfix start-fg``) as a child of the test, stopped by its pid.

Needs Debian's ``postfix`` package (installed non-interactively when missing and apt-get can)
and root (the master starts as root and drops to the ``postfix`` user). ``postfix_missing()``
says why it cannot run, or returns None."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
SERVICES = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_missing() -> str | None:
    """Why a private Postfix cannot run here (None: it can). Installs the package first when
    it is missing and apt-get is available."""
    if os.geteuid() != 0:
        return "a Postfix master must start as root"
    if not Path(POSTFIX).exists() and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "postfix"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            timeout=600,
            check=False,
        )
    if not Path(POSTFIX).exists():
        return "Postfix is not installed and `apt-get install postfix` did not install it"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postfix_relay(relayhost: str, relay_port: int) -> Iterator[int]:
    """A running private Postfix relaying to ``[relayhost]:relay_port``; yields its port."""
    top = Path(tempfile.mkdtemp(prefix="mailcast-postfix-"))
    top.chmod(0o755)  # the postfix user reaches its queue through it
    config, queue, data = top / "etc", top / "queue", top / "data"
    for folder in (config, queue, data):
        folder.mkdir()
    shutil.chown(data, "postfix")
    port = _free_port()
    log = top / "postfix.log"
    main = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "data_directory": str(data),
        "maillog_file": str(log),
        "maillog_file_prefixes": str(top),
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "myhostname": "relay.mailcast.test",
        "mydomain": "mailcast.test",
        "mydestination": "",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[{relayhost}]:{relay_port}",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "smtp_dns_support_level": "disabled",
        "smtp_tls_security_level": "none",
        "smtpd_tls_security_level": "none",
        "smtputf8_enable": "no",
        "biff": "no",
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
    }
    (config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    (config / "master.cf").write_text(SERVICES.format(listen=f"127.0.0.1:{port}"))
    output = (top / "start.out").open("wb")
    proc = subprocess.Popen(
        [POSTFIX, "-c", str(config), "start-fg"],
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                said = (top / "start.out").read_text(errors="replace")
                logged = log.read_text(errors="replace") if log.exists() else ""
                raise RuntimeError(f"postfix did not start: {said} {logged[-2000:]}")
            time.sleep(0.1)
        yield port
    finally:
        subprocess.run([POSTFIX, "-c", str(config), "stop"], capture_output=True, check=False)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the master we started, and its children
            proc.wait()
        output.close()
        shutil.rmtree(top, ignore_errors=True)
