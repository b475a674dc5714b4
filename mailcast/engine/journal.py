"""The hand-over journal: a crash leaves at most the message each connection had on the wire in
doubt, for the price of one small file append per message.

Each engine loop (one connection) keeps a journal file of its own on the local disk. Just before
a message goes on the wire, its row is written to the journal as *handed over* (``h ID``); once
the server has answered, the outcome follows (``a ID CODE MESSAGE-ID PROVIDER-ID`` accepted,
``r ID`` refused: not in doubt), written with the next hand-over, so one ``write`` a message.
A ``write`` is in the kernel once it returns: a SIGKILL or any crash of the process loses
nothing of it (only a crash of the machine can; the journal records the boot it was written in
and a resume after a reboot trusts it no more). Once the ledger has committed a batch's
outcomes and the next claim (a durable transaction), the journal is cut back to its header:
it never holds more than about one batch.

The ledger claims rows for a journaled connection with a token starting with ``j`` and does not
mark them handed over (one statement a batch, as with ``crash_window: batch``). After a crash,
``read_journals`` tells a resume, per token, which of its ``sending`` rows were accepted (they
become ``sent``), which were on the wire (``unknown``) and, by omission, which were only
reserved (``pending`` again, sent on resume). Where no trustworthy journal is found (the resume
runs on another machine, the machine rebooted, the files were removed) every row the token
holds is ``unknown``, as after a crash with ``crash_window: batch``.

A live writer holds an exclusive ``flock`` on its file: a resume that finds one locked knows
that sender is still at work on this machine and leaves its rows to it (``Recovered.live``).

Linux only (the boot id); elsewhere ``available()`` is False and ``crash_window: message`` writes
each hand-over to the ledger instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from mailcast.ledger.store import JOURNAL_TOKEN_PREFIX

try:
    import fcntl
except ImportError:  # pragma: no cover - not Linux
    fcntl = None  # type: ignore[assignment]

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
MAGIC = "mailcast-journal 1"
TOKEN_PREFIX = JOURNAL_TOKEN_PREFIX  # ledger claim tokens of journaled connections


def boot_id() -> str | None:
    """This boot of the machine (Linux), None where it cannot be told."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def available(directory: Path) -> bool:
    """Can journals be kept here: Linux (boot id, flock) and a writable folder."""
    if fcntl is None or boot_id() is None:
        return False
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(directory, os.W_OK)


def new_token() -> str:
    """A ledger claim token (32 characters) that says "hand-overs are in a journal"."""
    return TOKEN_PREFIX + uuid.uuid4().hex[:31]


def is_journal_token(token: str | None) -> bool:
    return bool(token) and token.startswith(TOKEN_PREFIX)  # type: ignore[union-attr]


def run_folder(directory: Path, run_id: str) -> Path:
    """The run's folder of journals (run ids are ours, but a name is never trusted as a path)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).lstrip(".") or "run"
    return directory / safe


def _field(value: str | None) -> bytes:
    if not value:
        return b"-"
    if value == "-":
        return b"%2D"
    if any(c in value for c in " \r\n%") or not value.isprintable():
        value = quote(value, safe="<>@.!#$&'*+/=?^_`{|}~:;,[]()")
    return value.encode()


def _unfield(raw: str) -> str | None:
    return None if raw == "-" else unquote(raw)


class Journal:
    """One connection's journal (not shared between threads)."""

    def __init__(self, directory: Path, run_id: str, token: str) -> None:
        folder = run_folder(directory, run_id)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{token}.{os.getpid()}.{uuid.uuid4().hex[:8]}.log"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        header = f"{MAGIC} {boot_id()} {token}\n".encode()
        os.write(self._fd, header)
        os.fsync(self._fd)  # the header (which boot) must survive anything
        with contextlib.suppress(OSError):
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._header = len(header)
        self._pending = bytearray()  # outcomes not yet written (they go with the next write)

    def handing_over(self, row_id: int) -> None:
        """Row ``row_id``'s message is about to go on the wire (and the earlier outcomes)."""
        self._pending += b"h %d\n" % row_id
        os.write(self._fd, self._pending)
        self._pending.clear()

    def accepted(
        self, row_id: int, code: int, message_id: str | None, provider_id: str | None
    ) -> None:
        self._pending += b"a %d %d %s %s\n" % (
            row_id,
            code,
            _field(message_id),
            _field(provider_id),
        )

    def refused(self, row_id: int) -> None:
        """The server answered and did not keep the message: not in doubt."""
        self._pending += b"r %d\n" % row_id

    def flush(self) -> None:
        """Write the outcomes not yet written (before the ledger records them)."""
        if self._pending:
            os.write(self._fd, self._pending)
            self._pending.clear()

    def committed(self) -> None:
        """The ledger has durably recorded everything written so far: start afresh."""
        self.flush()
        os.ftruncate(self._fd, self._header)

    def close(self) -> None:
        self.flush()
        os.close(self._fd)  # the lock goes with it; the file stays until the run is done


@dataclass
class Recovered:
    """What one claim token's journals say about its rows (see ``read_journals``)."""

    trusted: bool = True
    live: bool = False  # its sender is still at work (on this machine): leave its rows alone
    accepted: dict[int, tuple[int, str | None, str | None]] = field(default_factory=dict)
    in_doubt: set[int] = field(default_factory=set)
    files: list[Path] = field(default_factory=list)


def read_journals(directory: Path, run_id: str) -> dict[str, Recovered]:
    """Every journal of the run on this machine, per claim token. A token is untrusted when any
    of its files was written before the last reboot or cannot be read, and live while a
    process still writes one of them."""
    folder = run_folder(directory, run_id)
    found: dict[str, Recovered] = {}
    if not folder.is_dir():
        return found
    now = boot_id()
    for path in sorted(folder.glob("*.log")):
        token = path.name.split(".", 1)[0]
        state = found.setdefault(token, Recovered())
        state.files.append(path)
        try:
            with _locked(path) as text:
                if text is None:
                    state.live = True
                else:
                    _read(text, now, state)
        except (OSError, ValueError):
            state.trusted = False
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[str | None]:
    """The journal's text, read under a shared lock; None while its writer holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="strict") as f:
            yield f.read()
    finally:
        os.close(fd)


def _read(text: str, now: str | None, state: Recovered) -> None:
    lines = text.split("\n")
    head = lines[0].split(" ")
    if " ".join(head[:2]) != MAGIC or len(head) != 4 or now is None or head[2] != now:
        state.trusted = False
        return
    last: dict[int, str] = {}
    for line in lines[1:]:
        if not line:
            continue  # the end (a torn last line has no newline: see below)
        parts = line.split(" ")
        kind, row = parts[0], int(parts[1])
        last[row] = kind
        if kind == "a":
            state.accepted[row] = (int(parts[2]), _unfield(parts[3]), _unfield(parts[4]))
    if text and not text.endswith("\n"):
        raise ValueError("torn journal line")  # cannot happen with whole writes; trust nothing
    state.in_doubt |= {row for row, kind in last.items() if kind == "h"}


def remove_run(directory: Path, run_id: str, paths: list[Path] | None = None) -> None:
    """Journals no longer needed: ``paths`` (settled by a resume), or all of the run's (it
    completed); the run's folder goes with its last journal."""
    folder = run_folder(directory, run_id)
    for path in folder.glob("*.log") if paths is None else paths:
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
