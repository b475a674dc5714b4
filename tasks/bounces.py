"""The ``process-mailbox`` task: read the bounce mailbox into the ledger."""

from __future__ import annotations

from mailcast.tasks._prefect import task

from mailcast.engagement.mailbox import open_inbox
from mailcast.engagement.processing import BounceSummary, process_mailbox


@task(name="process-mailbox", retries=0)
def process_mailbox_task(
    maildir: str | None, imap_url: str | None, database_url: str, soft_bounce_limit: int
) -> BounceSummary:
    return process_mailbox(
        open_inbox(maildir, imap_url), database_url, soft_bounce_limit=soft_bounce_limit
    )
