"""The campaign flow: checks → prepare (ingest → validate → dedupe → plan, streamed) → send
(chunks over connections, in threads or worker processes) → summary.

Orchestration only: every step is a task from ``tasks/``. Deployed as ``send-campaign`` in
prefect.yaml; the ``spec`` parameter renders as a form in the Prefect UI. Safe by default:
unless ``dry_run`` is false, messages are written to an outbox folder and nothing is sent.

Sending: the run's pending rows are split into chunks (``tasks.plan.send_chunks``); a
``send-chunk`` task sends one chunk over one or more connections (threads sharing the chunk's
rows). With ``workers: 1`` the chunk tasks run in this process (up to 16 at once; up to 16
connections that is one connection per chunk); with more, in a pool of that many processes,
one chunk at a time each, over ceil(connections / workers) connections. The SMTP server's
concurrency limit (``tasks.limits``) is held per chunk, the run's rate limit is shared by all
processes (``tasks.send.Pacer``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any, Protocol

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from mailcast.errors import MailcastError
from mailcast.settings import Settings
from mailcast.spec import CampaignSpec
from mailcast.transport.target import Target
from tasks.ingest import columns_task
from tasks.limits import holding, server_limit_task
from tasks.plan import Chunker, prepare_task
from tasks.progress import Limits, RunProgress
from tasks.render import check_templates_task
from tasks.resume import reopen_task, run_planned_task
from tasks.send import (
    ChunkResult,
    check_message_task,
    check_transport_task,
    drop_run_state,
    preload,
    send_chunk_task,
)
from tasks.summary import RunSummary, summary_task
from tasks.tracking import after_send_task, check_tracking_task

IN_PROCESS_TASKS = 16  # chunk tasks at once with workers: 1 (more connections: threads in each)


@flow(
    name="send-campaign",
    task_runner=ThreadPoolTaskRunner(max_workers=64),  # type: ignore[arg-type]
    log_prints=True,
    validate_parameters=True,
)
def send_campaign(
    spec: CampaignSpec,
    dry_run: bool = True,
    smtp_block: str | None = None,
    smtp_url: str | None = None,
    database_url: str | None = None,
    outbox_dir: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
    resend_unknown: bool = False,
    retry_failed: bool = False,
) -> RunSummary:
    """Send a campaign (or, with ``resume``, continue run ``run_id``)."""
    try:
        return _send_campaign(
            spec, dry_run, smtp_block, smtp_url, database_url, outbox_dir, run_id, resume,
            resend_unknown, retry_failed,
        )  # fmt: skip
    except MailcastError as exc:
        # The user's to fix (a paused run, credentials, TLS...): the flow run fails with the
        # one-line message instead of logging a traceback; a caller still gets it raised, and
        # the CLI prints it with its hint.
        return Failed(message=str(exc), data=exc)  # type: ignore[return-value]


def _send_campaign(
    spec: CampaignSpec,
    dry_run: bool,
    smtp_block: str | None,
    smtp_url: str | None,
    database_url: str | None,
    outbox_dir: str | None,
    run_id: str | None,
    resume: bool,
    resend_unknown: bool,
    retry_failed: bool,
) -> RunSummary:
    logger = get_run_logger()
    settings = Settings()
    database_url = database_url or settings.ledger_url()
    # A run's id is the flow run's id unless given: a Prefect retry of this flow run finds its
    # run already planned and resumes it instead of planning (and sending) a second time.
    run_id = run_id or flow_run.get_id() or str(uuid.uuid4())
    target = _target(settings, dry_run, smtp_block, smtp_url, outbox_dir, run_id)
    resume = resume or run_planned_task(database_url, run_id)
    # the SMTP server's concurrency limit (name, size): every connection of the run holds it
    limit = (
        server_limit_task(target, spec.connections)
        if spec.server_limit and not target.dry_run
        else None
    )

    with ExitStack() as stack:
        runner = None
        if spec.workers > 1:  # start the worker processes now: they load while the run plans
            runner = stack.enter_context(ProcessPoolTaskRunner(max_workers=spec.workers))
            _warm_up(runner, spec.workers)
        if resume:
            reopen_task(
                database_url, run_id, resend_unknown=resend_unknown, retry_failed=retry_failed
            )
        else:
            columns = columns_task(spec.recipients, spec.base_dir)  # the header only
            check_templates_task(spec, columns)
            check_message_task(spec)  # sender, attachments: refused before the run is planned
            check_tracking_task(spec)  # the tracking secret, when the campaign is tracked
            if not target.dry_run:
                check_transport_task(target, limit)
            planned = prepare_task(database_url, spec, target, run_id)
            logger.info(
                "run %s planned: %d recipients, %d to send (%s)",
                run_id,
                planned.rows,
                planned.to_send,
                ", ".join(f"{k} {v}" for k, v in planned.outcomes.items()),
            )

        if resume and not target.dry_run:
            check_transport_task(target, limit)
        results, errors = _send(spec, run_id, database_url, target, runner, limit)
    total = ChunkResult()
    for result in results:
        total.add(result)
    logger.info("sent %d, failed %d, retried %d", total.sent, total.failed, total.retried)
    after_send_task(database_url, run_id)  # SMTP-time hard bounces → events; figures artifact
    summary: RunSummary = summary_task(database_url, run_id)
    print(summary.markdown())
    if errors:
        raise errors[0]
    return summary


def _target(
    settings: Settings,
    dry_run: bool,
    smtp_block: str | None,
    smtp_url: str | None,
    outbox_dir: str | None,
    run_id: str | None,
) -> Target:
    if dry_run:
        outbox = Path(outbox_dir) if outbox_dir else settings.outbox()
        return Target(outbox=str(outbox / (run_id or "run")))
    target = Target(
        smtp_block=smtp_block or settings.smtp_block,
        smtp_url=smtp_url or settings.smtp_url,
    )
    target.check()
    return target


def _send(
    spec: CampaignSpec,
    run_id: str,
    database_url: str,
    target: Target,
    runner: ProcessPoolTaskRunner | None,
    limit: tuple[str, int | None] | None,
) -> tuple[list[ChunkResult], list[BaseException]]:
    """Send the run's pending rows: chunk tasks in this process (``runner`` None) or in the
    worker processes, within the server's concurrency ``limit`` (name, size)."""
    from mailcast.ledger.store import Ledger

    logger = get_run_logger()
    connections = spec.connections
    if limit is not None:
        name, size = limit
        if size is not None and size < connections:
            logger.info("the concurrency limit %s allows %d connections", name, size)
            connections = max(1, size)
    slots = spec.workers if runner is not None else IN_PROCESS_TASKS  # chunk tasks at once
    threads = math.ceil(connections / min(slots, connections))  # connections per chunk task
    slots = math.ceil(connections / threads)
    chunks = Chunker.for_run(
        Ledger(database_url),
        run_id,
        chunk_size=spec.chunk_size,
        threads=threads,
        connections=connections,
    )
    logger.info(
        "sending %d rows over %d connections (%d chunk tasks at once, %d connections each%s)",
        chunks.left,
        connections,
        slots,
        threads,
        f"; concurrency limit {limit[0]}" if limit is not None else "",
    )
    hold = None
    if limit is not None and limit[1] is not None:
        name = limit[0]

        def hold(n: int, wait: bool) -> AbstractContextManager[Any] | None:
            return holding(name, n, wait=wait)

    def submit(bounds: tuple[int, int], n: int) -> PrefectFuture[Any]:
        parameters = {
            "spec": spec, "run_id": run_id, "bounds": bounds, "database_url": database_url,
            "target": target, "threads": n,
        }  # fmt: skip
        if runner is None:
            return send_chunk_task.submit(**parameters)  # type: ignore[no-any-return]
        return runner.submit(send_chunk_task.prefect_task, parameters)

    progress = RunProgress(
        spec.name,
        chunks.left,
        Limits(
            connections=connections,
            workers=slots if runner is not None else 1,
            threads=threads,
            concurrency_limit=limit[0] if limit is not None else None,
            concurrency_size=limit[1] if limit is not None else None,
            rate_limit=spec.rate_limit,
        ),
    )
    attempt = str(flow_run.get_id() or "")
    try:
        results, errors = bounded_map(
            submit,
            chunks,
            limit=slots,
            threads=threads,
            connections=connections,
            hold=hold,
            on_result=lambda r: progress.advance(r.sent, r.failed),
        )
        logger.info("sent in %d chunks", chunks.chunks)
        return results, errors
    finally:
        drop_run_state(run_id, attempt)


def _warm_up(runner: ProcessPoolTaskRunner, workers: int) -> None:
    """Have the pool start its processes and load the send engine now, while the run is being
    planned (a worker process takes a few seconds of CPU to start)."""
    executor = getattr(runner, "_executor", None)
    if executor is None:  # pragma: no cover - Prefect's internals changed: start on first use
        return
    for _ in range(workers):
        executor.submit(preload)


class ItemSource(Protocol):
    """Items made for the task slot that takes them (e.g. a ``Chunker``)."""

    @property
    def left(self) -> int: ...

    def take(self, threads: int) -> Any: ...

    def clear(self) -> None: ...


class _Items:
    """A list as an ``ItemSource``."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    @property
    def left(self) -> int:
        return len(self.items)

    def take(self, threads: int) -> Any:
        return self.items.pop(0)

    def clear(self) -> None:
        self.items.clear()


def bounded_map(
    submit: Any,
    items: list[Any] | ItemSource,
    *,
    limit: int,
    threads: int = 1,
    connections: int | None = None,
    hold: Callable[[int, bool], AbstractContextManager[Any] | None] | None = None,
    on_result: Callable[[Any], None] | None = None,
) -> tuple[list[Any], list[BaseException]]:
    """Submit a task per item, ``submit(item, n)``, with at most ``limit`` running at once (task
    slots), each given ``n`` = up to ``threads`` connections, all together at most
    ``connections`` (default: ``limit`` × ``threads``). ``items`` is a list, or a source that
    makes each item for the slot that takes it (``take(n)``, e.g. a ``Chunker``). Returns the
    results (in completion order) and the errors; after the first error no new item is
    started, the running ones finish.

    ``on_result``, when given, is called with each result as it comes (the progress artifact).

    ``hold(n, wait)``, when given, takes a task slot's share of the server's concurrency limit:
    entered when the slot opens (before its first item) and left when the slot has no item
    left, held from one chunk to the next instead of acquired again for each. It waits for the
    slots only while nothing is held (``wait``); otherwise it returns None when they are taken
    and is asked again a little later, so two runs sharing a limit never wait on each other
    while each holds part of it."""
    budget = connections if connections is not None else limit * threads
    source = _Items(items) if isinstance(items, list) else items
    running: dict[PrefectFuture[Any], _Slot] = {}
    idle: list[_Slot] = []
    results: list[Any] = []
    errors: list[BaseException] = []
    try:
        if hold is not None and source.left:
            idle = _open_slots(hold, limit, threads, budget)
        while source.left or running:
            short = False  # a new slot could not get its share of the limit: ask again soon
            while source.left:
                used = sum(s.n for s in running.values())
                if idle:
                    slot = idle.pop()
                elif len(running) < limit and used < budget:
                    slot = _Slot(min(threads, budget - used))
                    if hold is not None:
                        held = hold(slot.n, not running)
                        if held is None:
                            short = True
                            break
                        slot.stack.enter_context(held)
                else:
                    break
                running[submit(source.take(slot.n), slot.n)] = slot
            for slot in idle:  # nothing left for them
                slot.stack.close()
            idle.clear()
            if not running:
                continue
            try:
                done = next(as_completed(list(running), timeout=_RETRY_HOLD if short else None))
            except TimeoutError:
                continue
            idle.append(running.pop(done))
            try:
                results.append(done.result())
                if on_result is not None:
                    on_result(results[-1])
            except BaseException as exc:
                errors.append(exc)
                source.clear()  # stop starting new chunks; let running ones finish
    finally:
        for slot in [*idle, *running.values()]:
            slot.stack.close()
    return results, errors


def _open_slots(
    hold: Callable[[int, bool], AbstractContextManager[Any] | None],
    limit: int,
    threads: int,
    budget: int,
) -> list[_Slot]:
    """Take the task slots' shares of the concurrency limit before any task starts, all at
    once (an acquisition is quick against an idle Prefect server, slow against one busy
    recording task runs): the first waiting for its share, the others only if free now."""
    from concurrent.futures import ThreadPoolExecutor

    sizes: list[int] = []
    while len(sizes) < limit and sum(sizes) < budget:
        sizes.append(min(threads, budget - sum(sizes)))
    # All of them in one acquisition when they are free now (one API call instead of one per
    # slot; measured: 12 slots one by one took 2-3 s of a 2,000-recipient run). The lease is
    # released when the last of these slots closes.
    whole = hold(sum(sizes), False)
    if whole is not None:
        shared = _SharedHold(whole, len(sizes))
        slots = [_Slot(n) for n in sizes]
        for slot in slots:
            slot.stack.callback(shared.leave)
        return slots
    first = _Slot(sizes[0])
    first.stack.enter_context(hold(first.n, True))  # type: ignore[arg-type]
    slots = [first]
    with ThreadPoolExecutor(max_workers=min(16, len(sizes))) as pool:
        others = [_Slot(n) for n in sizes[1:]]
        for slot, held in zip(others, pool.map(lambda n: hold(n, False), sizes[1:]), strict=True):
            if held is not None:
                slot.stack.enter_context(held)
                slots.append(slot)
    return slots


_RETRY_HOLD = 2.0  # seconds before a task slot asks the concurrency limit again


class _SharedHold:
    """One acquisition shared by several task slots: left when the last of them leaves."""

    def __init__(self, held: AbstractContextManager[Any], slots: int) -> None:
        self.stack = ExitStack()
        self.stack.enter_context(held)
        self.left = slots

    def leave(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.stack.close()


class _Slot:
    """A task slot of ``bounded_map``: its connections, and what it holds for them."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stack = ExitStack()
