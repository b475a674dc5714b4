"""The campaign flow: ingest → validate → dedupe → plan → send (mapped over chunks) → summary.

Orchestration only: every step is a task from ``tasks/``. Deployed as ``send-campaign`` in
prefect.yaml; the ``spec`` parameter renders as a form in the Prefect UI. Safe by default:
unless ``dry_run`` is false, messages are written to an outbox folder and nothing is sent.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from mailcast.errors import MailcastError
from mailcast.settings import Settings
from mailcast.spec import CampaignSpec
from mailcast.transport.target import Target
from tasks.dedupe import dedupe_task
from tasks.ingest import ingest_task
from tasks.plan import plan_task
from tasks.render import check_templates_task
from tasks.resume import reopen_task, run_planned_task
from tasks.send import ChunkResult, check_message_task, check_transport_task, send_chunk_task
from tasks.summary import RunSummary, summary_task
from tasks.tracking import after_send_task, check_tracking_task, suppression_task
from tasks.validate import validate_task


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

    if resume:
        reopen_task(database_url, run_id, resend_unknown=resend_unknown, retry_failed=retry_failed)
    else:
        table = ingest_task(spec.recipients, spec.base_dir)
        check_templates_task(spec, table.columns)
        check_message_task(spec)  # sender, attachments: refused before the run is planned
        check_tracking_task(spec)  # the tracking secret, when the campaign is tracked
        suppressed = suppression_task(database_url)  # the ledger's: every campaign skips them
        table = validate_task(
            quote(table),
            spec.recipients.required_columns,
            quote(suppressed),
            spec.check_deliverability,
        )
        table = dedupe_task(quote(table))
        if not target.dry_run:
            check_transport_task(target)
        plan_task(database_url, spec, quote(table), target, run_id)
        logger.info("run %s planned: %d recipients", run_id, len(table.rows))

    if resume and not target.dry_run:
        check_transport_task(target)
    chunks = _chunks(database_url, run_id, spec.chunk_size)
    results, errors = bounded_map(
        lambda bounds: send_chunk_task.submit(spec, run_id, bounds, database_url, target),
        chunks,
        limit=spec.connections,
    )
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


def _chunks(database_url: str, run_id: str, size: int) -> list[tuple[int, int]]:
    from mailcast.ledger.store import Ledger

    return Ledger(database_url).id_ranges(run_id, size)


def bounded_map(
    submit: Any, items: list[Any], *, limit: int
) -> tuple[list[Any], list[BaseException]]:
    """Submit a task per item with at most ``limit`` running at once (one SMTP connection each).
    Returns the results (in completion order) and the errors; after the first error no new
    item is started, the running ones finish."""
    pending = list(items)
    running: list[PrefectFuture[Any]] = []
    results: list[Any] = []
    errors: list[BaseException] = []
    while pending or running:
        while pending and len(running) < limit:
            running.append(submit(pending.pop(0)))
        done = next(as_completed(running))
        running.remove(done)
        try:
            results.append(done.result())
        except BaseException as exc:
            errors.append(exc)
            pending.clear()  # stop starting new chunks; let running ones finish
    return results, errors
