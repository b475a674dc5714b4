"""Recipients from the contacts mailcast keeps: ``recipients: {list: NAME}`` (the list's confirmed
members; on a single opt-in list every member who did not leave) or ``recipients: {segment:
NAME}``, enabled contacts only (blocklisted ones are never read). Each row's fields are the
contact's attributes plus ``email`` and ``name``; the columns are ``email``, ``name`` and every
attribute name the audience has (an attribute a contact lacks is empty).

The rows are streamed from the ledger database with a server-side cursor on Postgres (a
million contacts take a few hundred MB at most: only the row at hand is in memory). Contacts
were validated when they were added: their rows carry their key already, so validation does not
check their addresses again (suppression, required columns and dedupe still apply).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

from mailcast.errors import SourceError
from mailcast.recipients.model import Recipient
from mailcast.recipients.stream import RecipientStream, check_header
from mailcast.spec import RecipientSource


def field_text(value: Any) -> str:
    """An attribute's JSON value as the text a template sees."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def read_audience(source: RecipientSource, database_url: str) -> RecipientStream:
    """Open a list's or a segment's contacts in the ledger at ``database_url``."""
    from mailcast.ledger import segments as sql
    from mailcast.ledger.store import Ledger
    from mailcast.recipients.segments import parse, segment_where

    audience = source.audience
    assert audience is not None
    kind, name = audience
    where = f"{kind} {name!r}"
    engine = Ledger(database_url).engine
    conn = engine.connect()
    try:
        if kind == "list":
            cond = sql.list_condition(conn, name)
            if cond is None:
                raise SourceError(
                    "no such list",
                    where=where,
                    hint="`mailcast lists show` lists them (check `recipients.list` in the spec)",
                )
        else:
            saved = sql.get(conn, name)
            node = parse(saved.expression, where=segment_where(name))
            cond = sql.condition(conn, node, where=segment_where(name))
        keys = [k for k in sql.audience_keys(conn, cond) if k not in ("email", "name")]
        columns = ["email", "name", *keys]
        check_header(columns, source, where)
    except BaseException:
        conn.close()
        raise

    pg = conn.dialect.name == "postgresql"
    prefetch = _Prefetch(sql.audience_rows(conn, cond, keys))

    def rows() -> Iterator[Recipient]:
        number = 0
        for part in prefetch:
            for row in part:
                number += 1
                address, key, display = row[0], row[1], row[2]
                fields = {"email": address, "name": display or ""}
                if pg:  # the values as text, in the order of keys
                    for k, v in zip(keys, row[3:], strict=True):
                        fields[k] = "" if v is None else v
                else:
                    attributes = row[3] or {}
                    for k in keys:
                        fields[k] = field_text(attributes.get(k))
                yield Recipient(number, address, fields, None, key)

    def close() -> None:
        try:
            prefetch.close()
        finally:
            conn.close()

    return RecipientStream(where, columns, rows(), close)


class _Prefetch:
    """Iterate ``batches`` in a thread of its own, a few batches ahead: the database prepares
    and sends the next rows while this process plans the previous ones (the driver waits
    without the GIL). Errors reach the reader; ``close`` stops the thread."""

    DEPTH = 3

    def __init__(self, batches: Iterator[list[tuple[Any, ...]]]) -> None:
        self._batches = batches
        self._queue: queue.Queue[Any] = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        try:
            for part in self._batches:
                while not self._stop.is_set():
                    try:
                        self._queue.put(part, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the reader
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[list[tuple[Any, ...]]]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audience-rows", daemon=True)
            self._thread.start()
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


_DONE = object()
