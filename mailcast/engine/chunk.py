"""Wiring one chunk of a run: the ledger, the campaign's Composer and the transport, over
one or more connections (engine loops in threads sharing the chunk's rows), and what a run
keeps per process (its control and pacer)."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mailcast.compose.composer import Composer
from mailcast.engine import journal
from mailcast.engine.claim_group import ClaimGroup
from mailcast.engine.control import RunControl
from mailcast.engine.loop import ChunkResult, ChunkWork, run_connection
from mailcast.engine.pacing import Pacer
from mailcast.errors import AuthError, RunStopped, TlsError
from mailcast.ledger.store import Ledger, Store
from mailcast.settings import Settings
from mailcast.spec import CampaignSpec
from mailcast.transport.base import Transport
from mailcast.transport.factory import Target

_pacers: dict[tuple[str, str], Pacer] = {}
_pacers_lock = threading.Lock()
_controls: dict[tuple[str, str], RunControl] = {}


def pacer_path(run_id: str, attempt: str) -> Path:
    """The file through which the processes of one flow run (``attempt``) share the run's rate."""
    return Path(tempfile.gettempdir()) / f"mailcast-pace-{run_id}-{attempt}"


def run_pacer(run_id: str, rate: float | None, attempt: str = "") -> Pacer | None:
    """One pacer per run per process: the run's threads share its rate. Within a flow run
    (``attempt``: the flow run's id) the pacers of all its worker processes share one slot
    file, so the rate holds for the run as a whole."""
    if rate is None:
        return None
    with _pacers_lock:
        pacer = _pacers.get((run_id, attempt))
        if pacer is None or pacer.rate != rate:
            if pacer is not None:
                pacer.close()
            pacer = Pacer(rate, pacer_path(run_id, attempt) if attempt else None)
            _pacers[(run_id, attempt)] = pacer
        return pacer


def drop_run_state(run_id: str, attempt: str) -> None:
    """After the send phase: forget the run's control, close this process's pacer and remove
    the shared slot file."""
    with _pacers_lock:
        _controls.pop((run_id, attempt), None)
        pacer = _pacers.pop((run_id, attempt), None)
    if pacer is not None:
        pacer.close()
    if attempt:
        pacer_path(run_id, attempt).unlink(missing_ok=True)


def run_control(spec: CampaignSpec, run_id: str, attempt: str = "") -> RunControl:
    """One control per run per process, and per ``attempt`` (the Prefect flow run: a resume
    starts afresh, not stopped)."""
    with _pacers_lock:
        control = _controls.get((run_id, attempt))
        if control is None:
            control = _controls[(run_id, attempt)] = RunControl.for_spec(spec)
        return control


_parts: dict[tuple[str, str, str], tuple[Ledger, Composer]] = {}
_parts_lock = threading.Lock()
_PARTS_KEPT = 4  # runs whose parts a process keeps (a worker process serves one run at a time)


def run_parts(spec: CampaignSpec, run_id: str, database_url: str) -> tuple[Ledger, Composer]:
    """The ledger and the Composer of a run, built once per run per process (templates
    compiled, attachments encoded, the tracker ready)."""
    key = (run_id, database_url, spec.model_dump_json())
    with _parts_lock:
        parts = _parts.get(key)
        if parts is None:
            ledger = Ledger(database_url)
            parts = (ledger, Composer.for_run(spec, run_id, ledger))
            while len(_parts) >= _PARTS_KEPT:
                del _parts[next(iter(_parts))]
            _parts[key] = parts
        return parts


def _transports(target: Target) -> Callable[[], Transport]:
    """A factory of new, unopened transports to ``target`` (its settings, or block, are
    looked up once)."""
    from mailcast.transport.factory import transports

    return transports(target)


def handover_mode(crash_window: str) -> tuple[Path | None, bool]:
    """Where a chunk's connections record hand-overs: (the journal folder, or None; whether each
    hand-over is a ledger statement). ``message`` uses the local journal where one can be
    kept (Linux, a writable folder) and the ledger elsewhere; ``ledger`` always the ledger;
    ``batch`` neither (the claim hands its batch over)."""
    if crash_window == "message":
        folder = Settings().journals()
        if journal.available(folder):
            return folder, False
        return None, True
    return None, crash_window == "ledger"


def send_chunk(
    spec: CampaignSpec,
    run_id: str,
    bounds: tuple[int, int],
    database_url: str,
    target: Target,
    *,
    control: RunControl | None = None,
    threads: int = 1,
    pacer: Pacer | None = None,
) -> ChunkResult:
    """Send a chunk: the pending rows of ``run_id`` with ids in ``bounds``, over ``threads``
    connections (engine loops in threads sharing the chunk's rows). What the run's chunks
    need is built once per process (templates compiled, attachments encoded). When the run
    stops, its reason is kept as the run's note. ``pacer`` defaults to the run's pacer in this
    process (``rate_limit``)."""
    ledger, composer = run_parts(spec, run_id, database_url)
    control = control if control is not None else RunControl.for_spec(spec)
    if control.complaint_counts is None and control.max_complaint_rate and not target.dry_run:
        control.complaint_counts = partial(ledger.complaint_counts, run_id)
    if pacer is None:
        pacer = run_pacer(run_id, spec.rate_limit)
    work = ChunkWork(ledger.pending_ids(run_id, bounds[0], bounds[1]))
    threads = max(1, min(threads, len(work)))
    new_transport = _transports(target)
    # the connections' claims and hand-overs share transactions (engine/claim_group.py)
    store: Store = ClaimGroup(ledger) if threads > 1 else ledger
    journal_dir, per_message = handover_mode(spec.crash_window)
    # this chunk's claims in the ledger (shared by its connections)
    token = journal.new_token() if journal_dir is not None else uuid.uuid4().hex

    def loop() -> ChunkResult:
        return run_connection(
            store,
            new_transport(),
            composer,
            composer.envelope_sender,
            run_id,
            bounds[0],
            bounds[1],
            max_attempts=spec.max_attempts,
            pacer=pacer,
            control=control,
            sender_for=composer.sender_for if composer.per_message_sender else None,
            work=work,
            token=token,
            per_message=per_message,
            journal_dir=journal_dir,
        )

    try:
        if threads == 1:
            return loop()
        return _in_threads(loop, threads)
    except (RunStopped, AuthError, TlsError) as exc:
        # The summary shows the reason for a paused run; when the ledger itself is what
        # stopped the run, the reason is in the error (the note cannot be written).
        with contextlib.suppress(Exception):
            ledger.set_run(run_id, note=str(exc))
        raise
    finally:
        ledger.release(token)  # the chunk's hand-over connection


def _in_threads(loop: Callable[[], ChunkResult], threads: int) -> ChunkResult:
    """Run ``loop`` in ``threads`` threads; add up their results. If any failed, raise the
    error that says most (what stopped the run, else the first), after all have finished."""
    results: list[ChunkResult] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            result = loop()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(result)

    workers = [
        threading.Thread(target=run, name=f"mailcast-send-{i}", daemon=True) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        stopping = [e for e in errors if isinstance(e, AuthError | TlsError | RunStopped)]
        raise (stopping or errors)[0]
    total = ChunkResult()
    for r in results:
        total.add(r)
    return total
