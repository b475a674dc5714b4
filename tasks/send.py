"""The ``send-chunk`` task: one chunk of a run over one or more connections
(``mailcast.engine.chunk.send_chunk``), with the Prefect retry policy."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.engine.chunk import run_control, run_pacer, send_chunk
from mailcast.engine.loop import ChunkResult
from mailcast.errors import (
    AttachmentError,
    AuthError,
    RunStopped,
    SourceError,
    SpecError,
    TemplateError,
    TlsError,
)
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import Target

# Errors a retry of the chunk cannot fix: the run stopped itself, the credentials or TLS, or the
# campaign's own files.
NOT_RETRYABLE: tuple[type[BaseException], ...] = (
    AuthError,
    TlsError,
    RunStopped,
    SpecError,
    TemplateError,
    AttachmentError,
    SourceError,
)


def _is_retryable(task: object, task_run: object, state: object) -> bool:
    """Prefect retry condition: never retry a chunk that failed on credentials or TLS, that
    stopped with its run, or that cannot be built."""
    try:
        state.result()  # type: ignore[attr-defined]
    except NOT_RETRYABLE:
        return False
    except Exception:
        return True
    return True


@task(
    name="send-chunk",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_is_retryable,
    task_run_name="send-chunk-{bounds[0]}-{bounds[1]}",
)
def send_chunk_task(
    spec: CampaignSpec,
    run_id: str,
    bounds: tuple[int, int],
    database_url: str,
    target: Target,
    threads: int = 1,
) -> ChunkResult:
    """One chunk over ``threads`` connections. The run's control and pacer are per flow run
    (a resume starts afresh); a process pool worker unpickles this task by reference."""
    from prefect.runtime import flow_run

    attempt = str(flow_run.get_id() or "")
    return send_chunk(
        spec,
        run_id,
        bounds,
        database_url,
        target,
        control=run_control(spec, run_id, attempt),
        threads=threads,
        pacer=run_pacer(run_id, spec.rate_limit, attempt),
    )


def preload() -> None:
    """Import what sending needs (a worker process calls it as it starts: see the flow)."""
    import prefect.task_engine  # noqa: F401

    import mailcast.compose.composer
    import mailcast.engine.chunk
    import mailcast.transport.smtp  # noqa: F401
