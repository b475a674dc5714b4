"""The campaign flow: checks → prepare (ingest → validate → dedupe → plan, streamed) → send
(chunks over connections, in threads or worker processes) → summary.

Orchestration only: every step is a task from ``tasks/``. Deployed as ``send-campaign`` in
prefect.yaml; the ``spec`` parameter renders as a form in the Prefect UI. Safe by default:
unless ``dry_run`` is false, messages are written to an outbox folder and nothing is sent.

No secret is a parameter (Prefect stores parameters in clear): the ledger is the worker's
(MAILCAST_DATABASE_URL; the CLI sets it for the flows it runs in its own process) and an SMTP
password comes from MAILCAST_SMTP_PASSWORD or the SMTP block, an API provider's keys from its
block (``transport_block``).

Sending: ``tasks.dispatch.send_run`` hands the run's pending rows out as chunks to ``send-chunk``
tasks, each over one or more connections; with ``workers: 1`` they run in this process, with
more in a pool of that many processes, within the SMTP server's concurrency limit
(``tasks.limits``).
"""

from __future__ import annotations

import uuid
from contextlib import ExitStack

from mailcast.tasks.checks import (
    check_message_task,
    check_repeat_task,
    check_templates_task,
    check_tracking_task,
    check_transport_task,
    columns_task,
)
from mailcast.tasks.dispatch import send_run, warm_up
from mailcast.tasks.limits import server_limit_task
from mailcast.tasks.prepare import prepare_task
from mailcast.tasks.resume import reopen_task, run_planned_task
from mailcast.tasks.summary import summary_task
from mailcast.tasks.tracking import after_send_task
from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Failed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from mailcast.engine.loop import ChunkResult
from mailcast.engine.summary import RunSummary
from mailcast.errors import MailcastError
from mailcast.settings import Settings
from mailcast.spec import CampaignSpec
from mailcast.transport.factory import target_for


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
    outbox_dir: str | None = None,
    run_id: str | None = None,
    resume: bool = False,
    resend_unknown: bool = False,
    retry_failed: bool = False,
    transport_block: str | None = None,
    transport_url: str | None = None,
    again: bool = False,
) -> RunSummary:
    """Send a campaign (or, with ``resume``, continue run ``run_id``). The transport: a saved
    block (``transport_block``: NAME or KIND/NAME; ``smtp_block``: an SMTP block's name) or a
    URL without secrets (``transport_url``: smtp://…, ses://REGION …; ``smtp_url``).

    A real run of a campaign already sent to the same recipients source (a completed real run)
    is refused unless the spec has ``allow_repeats: true`` (or ``once_per_contact``); ``again``
    is the CLI's confirmation (``mailcast send --again``) and counts only outside a deployment:
    a deployment's run needs ``allow_repeats``."""
    try:
        target = (transport_block, smtp_block, transport_url, smtp_url)
        return _send_campaign(
            spec, dry_run, target, outbox_dir, run_id, resume, resend_unknown, retry_failed,
            again,
        )  # fmt: skip
    except MailcastError as exc:
        # The user's to fix (a paused run, credentials, TLS...): the flow run fails with the
        # one-line message instead of logging a traceback; a caller still gets it raised, and
        # the CLI prints it with its hint.
        return Failed(message=str(exc), data=exc)  # type: ignore[return-value]


def _send_campaign(
    spec: CampaignSpec,
    dry_run: bool,
    chosen: tuple[str | None, str | None, str | None, str | None],
    outbox_dir: str | None,
    run_id: str | None,
    resume: bool,
    resend_unknown: bool,
    retry_failed: bool,
    again: bool = False,
) -> RunSummary:
    logger = get_run_logger()
    settings = Settings()
    database_url = settings.ledger_url()  # the worker's ledger: never a parameter
    # A run's id is the flow run's id unless given: a Prefect retry of this flow run finds its
    # run already planned and resumes it instead of planning (and sending) a second time.
    run_id = run_id or flow_run.get_id() or str(uuid.uuid4())
    transport_block, smtp_block, transport_url, smtp_url = chosen
    target = target_for(
        settings, dry_run, smtp_block, smtp_url, outbox_dir, run_id,
        transport_block=transport_block, transport_url=transport_url,
    )  # fmt: skip
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
            warm_up(runner, spec.workers)
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
                confirmed = again and deployment.id is None
                check_repeat_task(database_url, spec, confirmed, run_id)
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
        results, errors = send_run(spec, run_id, database_url, target, runner, limit)
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
