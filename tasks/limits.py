"""The SMTP server's connection limit, across flow runs and worker processes: a Prefect global
concurrency limit named after the server (``smtp:HOST:PORT``, or ``smtp:BLOCK`` for a saved
SMTP block), one slot per connection.

The campaign flow holds, for each chunk task it runs at once, as many slots as that task opens
connections: acquired when the task slot gets its first chunk and kept while it goes from chunk
to chunk, released as soon as it has none left (never per message: an acquisition costs ~0.1 s,
and up to ~2 s against a busy Prefect server on SQLite). The limit's state shows on the Prefect
UI's Concurrency page. When the limit does not exist the flow creates it, with the run's
``connections`` as its size; an existing limit keeps its size (change it in the UI, or ``prefect
gcl update``), and a run never opens more connections than the limit allows. An inactive limit
holds nothing back.

Slots are held through a Prefect lease, renewed in the background. A process killed while
holding one would block its slots until the lease expires (a minute at least), so each lease is
also recorded as a file (``<tmp>/mailcast-leases/<limit>/<pid>-<lease>``) and the next run
against the same server on this machine first releases the leases of processes that no longer
exist (``release_orphans``).

This uses Prefect's lease functions behind ``prefect.concurrency.sync.concurrency`` (which
does not expose the lease id); Prefect is pinned below 3.9.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from mailcast.tasks._prefect import task

from mailcast.transport.factory import Target

if TYPE_CHECKING:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

log = logging.getLogger("mailcast.limits")

LEASE_SECONDS = 60.0  # the shortest lease Prefect grants; renewed while the chunk runs


def limit_name(target: Target) -> str | None:
    """The limit of ``target``'s SMTP server; None for a dry run (no server)."""
    if target.dry_run:
        return None
    return target.limit_key()


def ensure_limit(name: str, size: int) -> int | None:
    """The size of the limit ``name``, created with ``size`` slots when it does not exist;
    None when the limit is inactive (it holds nothing back)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run made it just now
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=size)
                )
                log.info("created the concurrency limit %s with %d slots", name, size)
            limit = client.read_global_concurrency_limit_by_name(name)
    return limit.limit if limit.active else None


def _leases_dir(name: str) -> Path:
    return Path(tempfile.gettempdir()) / "mailcast-leases" / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def holding(name: str, slots: int, *, wait: bool = True) -> AbstractContextManager[None] | None:
    """Take ``slots`` slots of the limit ``name``; leaving the returned context releases them.
    With ``wait`` false, None when they are not free right now (instead of waiting)."""
    from prefect.concurrency._sync import acquire_concurrency_slots_with_lease
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    if not wait and not _free(name, slots):
        return None  # looked taken: not asked for (Prefect logs a refused try as an ERROR)
    try:
        response = acquire_concurrency_slots_with_lease(
            [name],
            slots,
            lease_duration=LEASE_SECONDS,
            holder=_holder(),
            suppress_warnings=True,
            max_retries=None if wait else 0,
        )
    except ConcurrencySlotAcquisitionError as exc:
        cause = exc.__cause__
        response_of = getattr(cause, "response", None)
        if not wait and getattr(response_of, "status_code", None) == 423:
            return None  # taken: ask again later
        raise
    return _held(name, slots, response)


def _free(name: str, slots: int) -> bool:
    """Whether ``slots`` slots of ``name`` look free right now (the acquisition still decides)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return True
    return not limit.active or limit.active_slots + slots <= limit.limit


@contextlib.contextmanager
def _held(name: str, slots: int, response: Any) -> Iterator[None]:
    from prefect.concurrency._asyncio import _discard_cleanup_lease
    from prefect.concurrency._events import (
        emit_concurrency_acquisition_events,
        emit_concurrency_release_events,
    )
    from prefect.concurrency._leases import maintain_concurrency_lease
    from prefect.concurrency._sync import release_concurrency_slots_with_lease

    if not response.limits:  # no such limit (removed since the run started): nothing to hold
        yield
        return
    events = emit_concurrency_acquisition_events(response.limits, slots)
    record = _leases_dir(name) / f"{os.getpid()}-{response.lease_id}"
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        record.touch()
    try:
        with maintain_concurrency_lease(
            response.lease_id, LEASE_SECONDS, raise_on_lease_renewal_failure=False
        ):
            yield
    finally:
        try:
            release_concurrency_slots_with_lease(response.lease_id)
            _discard_cleanup_lease(response.lease_id)
        finally:
            record.unlink(missing_ok=True)
            emit_concurrency_release_events(response.limits, slots, events)


def _holder() -> ConcurrencyLeaseHolder | None:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run, task_run

    if task_run_id := task_run.get_id():
        return ConcurrencyLeaseHolder(type="task_run", id=UUID(task_run_id))
    if flow_run_id := flow_run.get_id():
        return ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id))
    return None


def release_orphans(name: str) -> int:
    """Release the leases on ``name`` recorded by processes of this machine that are gone (a
    killed run); returns how many."""
    from prefect.concurrency._sync import release_concurrency_slots_with_lease

    released = 0
    folder = _leases_dir(name)
    if not folder.is_dir():
        return 0
    for record in folder.iterdir():
        pid_text, _, lease = record.name.partition("-")
        try:
            pid, lease_id = int(pid_text), UUID(lease)
        except ValueError:
            continue
        if _alive(pid):
            continue
        try:
            release_concurrency_slots_with_lease(lease_id)
            released += 1
        except Exception:  # expired and revoked already, or the server forgot it
            pass
        record.unlink(missing_ok=True)
    if released:
        log.info("released %d slot lease(s) of %s left by killed processes", released, name)
    return released


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def server_limit(target: Target, connections: int) -> tuple[str, int | None] | None:
    """The limit to hold for ``target`` and its size (see ``ensure_limit``), after releasing
    what killed processes left on it; None for a dry run."""
    name = limit_name(target)
    if name is None:
        return None
    size = ensure_limit(name, connections)
    release_orphans(name)
    return name, size


server_limit_task = task(name="server-limit", retries=0)(server_limit)
