"""The bounce mailbox: a local Maildir (tests, or a server that delivers to one) or a folder on
an IMAP server over TLS. Each message read is handed out once, then moved out of the way
(``done``): Maildir messages to the ``.Processed`` sub-folder (Maildir++), IMAP messages to the
``Processed`` folder (``MOVE``, or ``COPY`` + ``\\Deleted`` + ``EXPUNGE`` on servers without it).
The ledger's ``inbound_messages`` table counts each message once even if moving it fails.

IMAP URL: ``imaps://user@host[:993][/FOLDER]``; the password from MAILCAST_BOUNCE_IMAP_PASSWORD
or the Prefect Secret block named in MAILCAST_BOUNCE_IMAP_PASSWORD_BLOCK.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from mailcast.errors import MailboxError
from mailcast.settings import get_settings

__all__ = ["ImapInbox", "Inbox", "MailboxError", "MaildirInbox", "imap_password", "open_inbox"]

PROCESSED = "Processed"


class Inbox(Protocol):
    name: str

    def messages(self, limit: int) -> Iterator[tuple[str, bytes]]: ...

    def done(self, key: str) -> None: ...

    def close(self) -> None: ...


class MaildirInbox:
    """``new/`` and ``cur/`` of a Maildir; processed messages go to ``.Processed/cur/`` (marked
    seen), moved with one rename each."""

    def __init__(self, path: str | Path, processed: str = PROCESSED) -> None:
        self.root = Path(path).expanduser()
        self.name = str(self.root)
        if not (self.root / "new").is_dir() or not (self.root / "cur").is_dir():
            raise MailboxError("not a Maildir (no new/ and cur/ folders)", where=self.name)
        self.target = self.root / f".{processed}"
        for sub in ("tmp", "new", "cur"):
            (self.target / sub).mkdir(parents=True, exist_ok=True)
        (self.target / "maildirfolder").touch(exist_ok=True)

    def messages(self, limit: int) -> Iterator[tuple[str, bytes]]:
        n = 0
        for sub in ("new", "cur"):
            for entry in sorted(os.scandir(self.root / sub), key=lambda e: e.name):
                if n >= limit:
                    return
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                try:
                    data = Path(entry.path).read_bytes()
                except FileNotFoundError:  # taken by another reader meanwhile
                    continue
                n += 1
                yield entry.path, data

    def done(self, key: str) -> None:
        path = Path(key)
        name = path.name
        base, sep, flags = name.partition(":2,")
        if sep:
            flags = "".join(sorted(set(flags) | {"S"}))
            name = f"{base}:2,{flags}"
        else:
            name = f"{name}:2,S"
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, self.target / "cur" / name)

    def close(self) -> None:
        pass


class ImapInbox:  # pragma: no cover - needs an IMAP server; not exercised by the tests
    """A folder on an IMAP server over TLS (IMAP4_SSL, port 993 by default)."""

    def __init__(self, url: str, password: str, processed: str = PROCESSED) -> None:
        import imaplib
        import ssl

        parts = urlsplit(url)
        if parts.scheme != "imaps" or not parts.hostname or not parts.username:
            raise MailboxError(
                f"{url!r} is not imaps://user@host[:port][/folder]", where="imap_url"
            )
        self.folder = unquote(parts.path.lstrip("/")) or "INBOX"
        self.processed = processed
        self.name = f"imaps://{parts.hostname}/{self.folder}"
        try:
            self.conn = imaplib.IMAP4_SSL(
                parts.hostname, parts.port or 993, ssl_context=ssl.create_default_context()
            )
            self.conn.login(unquote(parts.username), password)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise MailboxError(
                f"cannot log in: {exc}", where=f"{parts.hostname}:{parts.port or 993}"
            ) from None
        typ, _ = self.conn.select(_quote(self.folder))
        if typ != "OK":
            raise MailboxError("cannot open the folder", where=self.name)
        self.conn.create(_quote(processed))  # fails harmlessly when it exists
        capabilities = {str(c).upper() for c in getattr(self.conn, "capabilities", ())}
        self.can_move = "MOVE" in capabilities
        self._done: list[str] = []

    def messages(self, limit: int) -> Iterator[tuple[str, bytes]]:
        typ, data = self.conn.uid("SEARCH", "UNDELETED")
        if typ != "OK" or not data or not data[0]:
            return
        for uid in data[0].split()[:limit]:
            typ, parts = self.conn.uid("FETCH", uid, "(BODY.PEEK[])")
            if typ != "OK":
                continue
            for item in parts:
                if isinstance(item, tuple) and len(item) == 2:
                    yield uid.decode(), bytes(item[1])
                    break

    def done(self, key: str) -> None:
        self._done.append(key)

    def close(self) -> None:
        try:
            if self._done:
                uids = ",".join(self._done)
                if self.can_move:
                    self.conn.uid("MOVE", uids, _quote(self.processed))
                else:
                    self.conn.uid("COPY", uids, _quote(self.processed))
                    self.conn.uid("STORE", uids, "+FLAGS.SILENT", r"(\Deleted)")
                    self.conn.expunge()
            self._done = []
        finally:
            with contextlib.suppress(Exception):
                self.conn.logout()


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_password() -> str:
    settings = get_settings()
    if settings.bounce_imap_password is not None:
        return settings.bounce_imap_password.get_secret_value()
    block = settings.bounce_imap_password_block
    if block:
        from prefect.blocks.system import Secret

        return str(Secret.load(block).get())  # type: ignore[union-attr]
    raise MailboxError("no IMAP password", where="MAILCAST_BOUNCE_IMAP_PASSWORD")


def open_inbox(maildir: str | None = None, imap_url: str | None = None) -> Inbox:
    """The Maildir, else the IMAP folder, else what MAILCAST_BOUNCE_MAILDIR /
    MAILCAST_BOUNCE_IMAP_URL name."""
    if not (maildir or imap_url):
        settings = get_settings()
        maildir = str(settings.bounce_maildir) if settings.bounce_maildir else None
        imap_url = None if maildir else settings.bounce_imap_url
    if maildir:
        return MaildirInbox(maildir)
    if imap_url:
        return ImapInbox(imap_url, imap_password())
    raise MailboxError("no bounce mailbox configured", where="process_bounces")
