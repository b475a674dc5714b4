"""Dispatching a run's chunks to task slots: chunk tasks in the flow's process (threads) or in
a pool of worker processes, each slot holding its share of the SMTP server's concurrency limit
from one chunk to the next. A Prefect adapter (futures, task runners); the flow calls
``send_run``."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Protocol

from mailcast.tasks.limits import holding
from mailcast.tasks.progress import Limits, RunProgress
from mailcast.tasks.send import preload, send_chunk_task
from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner

from mailcast.engine.chunk import drop_run_state
from mailcast.engine.chunking import Chunker
from mailcast.engine.loop import ChunkResult
from mailcast.ledger.store import Ledger
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import Target

IN_PROCESS_TASKS = 16  # chunk tasks at once with workers: 1 (more connections: threads in each)


def send_run(
    spec: CampaignSpec,
    run_id: str,
    database_url: str,
    target: Target,
    runner: ProcessPoolTaskRunner | None,
    limit: tuple[str, int | None] | None,
) -> tuple[list[ChunkResult], list[BaseException]]:
    """Send the run's pending rows: chunk tasks in this process (``runner`` None) or in the
    worker processes, within the server's concurrency ``limit`` (name, size)."""
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


def warm_up(runner: ProcessPoolTaskRunner, workers: int) -> None:
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
