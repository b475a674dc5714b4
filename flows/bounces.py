"""The process-bounces flow: read the bounce mailbox (a Maildir, or an IMAP folder over TLS),
record bounces, complaints, deferrals and mailed unsubscribe requests as events, suppress hard
bounces and complaints at once and soft bounces after ``soft_bounce_limit`` in a row, move each
processed message out of the inbox. Deployed in prefect.yaml on a 15-minute schedule; the
mailbox comes from the parameters or the worker's environment (MAILCAST_BOUNCE_MAILDIR, or
MAILCAST_BOUNCE_IMAP_URL with MAILCAST_BOUNCE_IMAP_PASSWORD[_BLOCK]).
"""

from __future__ import annotations

from mailcast.tasks.bounces import process_mailbox_task
from mailcast.tasks.tracking import publish_figures
from prefect import flow, get_run_logger

from mailcast.engagement.processing import BounceSummary
from mailcast.settings import Settings


@flow(name="process-bounces", log_prints=True, validate_parameters=True)
def process_bounces(
    maildir: str | None = None,
    imap_url: str | None = None,
    database_url: str | None = None,
    soft_bounce_limit: int = 3,
) -> BounceSummary:
    """Process the bounce mailbox once; publishes the counts (and the figures of every run it
    touched) as table artifacts."""
    from prefect.artifacts import create_table_artifact

    logger = get_run_logger()
    database_url = database_url or Settings().ledger_url()
    summary: BounceSummary = process_mailbox_task(
        maildir, imap_url, database_url, soft_bounce_limit
    )
    logger.info(
        "%s: %d read, %d recorded, %d already counted, %d ignored, %d newly suppressed",
        summary.mailbox, summary.read, summary.recorded, summary.already, summary.ignored,
        summary.suppressed,
    )  # fmt: skip
    create_table_artifact(
        table=summary.table() or [{"outcome": "(nothing new)", "messages": 0}],
        key="bounce-mailbox",
        description=f"messages processed from {summary.mailbox}",
    )
    for run_id in sorted(summary.runs):
        publish_figures(database_url, run_id)
    return summary
