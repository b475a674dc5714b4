"""After sending: SMTP-time rejections recorded as bounce events, and the run's figures as a
table artifact."""

from __future__ import annotations

from typing import Any

from mailcast.tasks._prefect import task

from mailcast.engagement.processing import record_smtp_bounces
from mailcast.engagement.report_page import run_figures


def publish_figures(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's figures as the Prefect table artifact ``run-engagement`` (needs a flow run)."""
    from prefect.artifacts import create_table_artifact

    rows = run_figures(database_url, run_id)
    table = [
        {"metric": r["metric"], "count": r["count"], "rate %": r["rate"], "of": r["rate_of"]}
        for r in rows
    ]
    create_table_artifact(
        table=table,
        key="run-engagement",
        description=f"mailcast run {run_id}: delivery, bounces, opens, clicks, unsubscribes",
    )
    return rows


@task(name="after-send", retries=0)
def after_send_task(database_url: str, run_id: str) -> int:
    """SMTP-time 5xx rejections → hard bounce events (and suppressions); publish the figures.
    Returns the number of bounce events added."""
    added = record_smtp_bounces(database_url, run_id)
    publish_figures(database_url, run_id)
    return added
