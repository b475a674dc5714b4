"""The dry-run transport: every message becomes an ``.eml`` file in a folder.

File names are derived from the message, not from a counter, so that any number of transports
(threads, processes, a resumed run) can write into one folder without clobbering each other:
``<recipient>-<first 12 hex digits of the SHA-256 of the message>.eml``, or ``<name>.eml`` when
the caller passes a name it knows to be unique. Each file is written to a temporary name and
renamed into place, so a reader never sees half a message. Writing the same message for the same
recipient twice leaves one file with identical content.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

from mailcast.errors import TransportError
from mailcast.transport.base import Reply

__all__ = ["OutboxTransport", "safe_filename"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]+")
_MAX_STEM = 120


def safe_filename(text: str, *, limit: int = _MAX_STEM) -> str:
    """``text`` reduced to characters that are safe in a file name on every OS."""
    safe = _UNSAFE.sub("_", text).strip("._") or "message"
    return safe[:limit]


class OutboxTransport:
    """Writes each message to ``folder`` instead of sending it. Thread-safe and process-safe."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"OutboxTransport({self.where!r})"

    def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def path_for(self, recipient: str, message: bytes, name: str | None = None) -> Path:
        """Where ``send`` writes this message."""
        if name is not None:
            return self.folder / f"{safe_filename(name)}.eml"
        digest = hashlib.sha256(message).hexdigest()[:12]
        return self.folder / f"{safe_filename(recipient)}-{digest}.eml"

    def send(
        self, sender: str, recipient: str, message: bytes, *, name: str | None = None
    ) -> Reply:
        path = self.path_for(recipient, message, name)
        try:
            try:
                self._write(path, message)
            except FileNotFoundError:  # the folder was removed under us: make it again
                self.folder.mkdir(parents=True, exist_ok=True)
                self._write(path, message)
        except OSError as exc:
            raise TransportError(
                f"cannot write {path.name}: {exc.strerror or exc}",
                where=self.where,
                hint="check that the outbox folder (MAILCAST_OUTBOX_DIR) is writable",
            ) from exc
        return Reply(250, f"written to {path}")

    def _write(self, path: Path, message: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(message)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
