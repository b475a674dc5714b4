"""Checks before a run is planned: the recipient header, the templates, the message's fixed
parts, the tracking secret and the SMTP server. Each fails the run with the one-line error
(no traceback, no retry) before a single recipient is touched."""

from __future__ import annotations

from contextlib import nullcontext

from mailcast.tasks._prefect import task
from mailcast.tasks.limits import holding

from mailcast.compose.dkim import signer_for
from mailcast.compose.mime import MessageBuilder
from mailcast.compose.templates import check_templates
from mailcast.engagement.links import check_tracking
from mailcast.recipients.prepare import check_repeat
from mailcast.recipients.sources import read_columns
from mailcast.spec import CampaignSpec, RecipientSource
from mailcast.transport.factory import Target, make_transport


def _never(task: object, task_run: object, state: object) -> bool:
    return False


# retries=1 with a condition that never retries: Prefect then fails the task without logging a
# traceback (retries=0 logs one); the error is the user's to fix, and the CLI prints one line.
QUIET = {"retries": 1, "retry_condition_fn": _never}


@task(name="read-header", persist_result=False, **QUIET)
def columns_task(source: RecipientSource, base_dir: str) -> list[str]:
    return read_columns(source, base_dir)


@task(name="check-templates", **QUIET)
def check_templates_task(spec: CampaignSpec, columns: list[str]) -> list[str]:
    return check_templates(spec, columns)


@task(name="check-message", **QUIET)
def check_message_task(spec: CampaignSpec) -> int:
    """Build the campaign's fixed parts once (sender, attachments: missing, a directory,
    outside the campaign folder, too large; the DKIM key: readable, usable); returns the
    attachments' encoded size."""
    size = MessageBuilder(spec).attachment_bytes
    signer_for(spec)
    return size


@task(name="check-tracking", **QUIET)
def check_tracking_task(spec: CampaignSpec) -> bool:
    return check_tracking(spec)


@task(name="check-repeat", **QUIET)
def check_repeat_task(database_url: str, spec: CampaignSpec, confirmed: bool, run_id: str) -> None:
    """Refuse a real run of a campaign already sent to the same recipients source (unless the
    spec allows repeats, or the CLI's user confirmed: ``again``)."""
    check_repeat(database_url, spec, confirmed=confirmed, run_id=run_id)


@task(name="check-smtp", **QUIET)
def check_transport_task(target: Target, limit: tuple[str, int | None] | None = None) -> str:
    """Connect (and log in) once: wrong credentials or TLS stop the run here, with host:port in
    the message. With the server's concurrency ``limit`` (name, size), the probe holds one of
    its slots: it is a connection like any other."""
    transport = make_transport(target)
    held = holding(limit[0], 1) if limit is not None and limit[1] is not None else None
    with held or nullcontext():
        transport.open()
        transport.close()
    return transport.where
