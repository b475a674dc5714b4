"""The process-bounces flow: read the bounce mailbox (a Maildir, or an IMAP folder over TLS),
record bounces, complaints, deferrals and mailed unsubscribe requests as events, suppress hard
bounces and complaints at once and soft bounces after ``soft_bounce_limit`` in a row, move each
processed message out of the inbox. Deployed in prefect.yaml on a 15-minute schedule; the
mailbox comes from the parameters or the worker's settings (MAILCAST_BOUNCE_MAILDIR, or
MAILCAST_BOUNCE_IMAP_URL with MAILCAST_BOUNCE_IMAP_PASSWORD[_BLOCK]).

With no mailbox configured (a fresh install) a run has nothing to read: it ends Completed, with
a warning and a markdown artifact that name the settings to set, instead of failing every 15
minutes. A mailbox that is configured but cannot be read (a wrong path, an IMAP error, no
password) still fails the run.
"""

from __future__ import annotations

from mailcast.tasks.bounces import process_mailbox_task
from mailcast.tasks.tracking import publish_figures
from prefect import flow, get_run_logger
from prefect.states import Completed

from mailcast.engagement.processing import BounceSummary
from mailcast.settings import get_settings

NOT_CONFIGURED = "no bounce mailbox configured: nothing to read"
HOW_TO_CONFIGURE = (
    "set MAILCAST_BOUNCE_MAILDIR (a Maildir), or MAILCAST_BOUNCE_IMAP_URL"
    " (imaps://user@host/INBOX) with MAILCAST_BOUNCE_IMAP_PASSWORD or"
    " MAILCAST_BOUNCE_IMAP_PASSWORD_BLOCK, in the worker's environment (or pass maildir / imap_url)"
)


def mailbox_configured(maildir: str | None, imap_url: str | None) -> bool:
    """Whether a bounce mailbox is given, as a parameter or in the settings."""
    if maildir or imap_url:
        return True
    settings = get_settings()
    return bool(settings.bounce_maildir or settings.bounce_imap_url)


def _not_configured() -> BounceSummary:
    """The run of an install without a bounce mailbox: Completed, saying what to set."""
    from prefect.artifacts import create_markdown_artifact

    get_run_logger().warning("%s; %s", NOT_CONFIGURED, HOW_TO_CONFIGURE)
    create_markdown_artifact(
        markdown=(
            "# No bounce mailbox configured\n\n"
            "This run had nothing to read. To process bounces, set in the worker's environment"
            " either\n\n"
            "- `MAILCAST_BOUNCE_MAILDIR`: the path of a Maildir the bounces are delivered to, or\n"
            "- `MAILCAST_BOUNCE_IMAP_URL`: `imaps://user@host[:993]/FOLDER`, with the password"
            " in `MAILCAST_BOUNCE_IMAP_PASSWORD` or the name of a Prefect Secret block in"
            " `MAILCAST_BOUNCE_IMAP_PASSWORD_BLOCK`,\n\n"
            "then restart the worker (or pass `maildir` / `imap_url` to the run)."
            " `MAILCAST_TRACKING_SECRET` lets it trust VERP return paths. See docs/deploy.md.\n"
        ),
        key="bounce-mailbox",
        description=NOT_CONFIGURED,
    )
    summary = BounceSummary(mailbox="(not configured)")
    return Completed(message=f"{NOT_CONFIGURED}; {HOW_TO_CONFIGURE}", data=summary)  # type: ignore[return-value]


@flow(name="process-bounces", log_prints=True, validate_parameters=True)
def process_bounces(
    maildir: str | None = None,
    imap_url: str | None = None,
    soft_bounce_limit: int = 3,
) -> BounceSummary:
    """Process the bounce mailbox once; publishes the counts (and the figures of every run it
    touched) as table artifacts. Without a mailbox configured: Completed, saying so. The ledger
    is the worker's (MAILCAST_DATABASE_URL): a database URL is never a flow parameter."""
    from prefect.artifacts import create_table_artifact

    if not mailbox_configured(maildir, imap_url):
        return _not_configured()
    logger = get_run_logger()
    database_url = get_settings().ledger_url()
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
