"""The campaign flow's tracking steps: the suppression list for validate, and after sending,
SMTP-time rejections recorded as bounce events and the run's figures as a table artifact."""

from __future__ import annotations

from typing import Any

from tasks._prefect import task


def suppression_list(database_url: str) -> dict[str, str]:
    """``address_key -> reason`` of every suppressed address of the ledger."""
    from mailcast.tracking.suppression import suppressed_for

    return suppressed_for(database_url)


def run_figures(database_url: str, run_id: str) -> list[dict[str, Any]]:
    """The run's counts and rates (``campaign_summary``) as table rows."""
    from sqlalchemy import text

    from mailcast.ledger.store import Ledger
    from mailcast.tracking.report_page import figure_rows

    ledger = Ledger(database_url)
    with ledger.engine.connect() as conn:
        row = (
            conn.execute(text("SELECT * FROM campaign_summary WHERE run_id = :r"), {"r": run_id})
            .mappings()
            .first()
        )
    return figure_rows(dict(row)) if row is not None else []


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
    from tasks.bounces import record_smtp_bounces

    added = record_smtp_bounces(database_url, run_id)
    publish_figures(database_url, run_id)
    return added


def check_tracking(spec: Any) -> bool:
    """When the campaign is tracked, the tracking secret must be there (TrackingError before
    the run is planned, not once per chunk); returns whether it is tracked."""
    from mailcast.tracking import tokens

    if spec.tracking_base_url or spec.bounce_domain or spec.unsubscribe_mailto:
        tokens.load_secret()
        return True
    return False


@task(name="check-tracking", retries=0)
def check_tracking_task(spec: Any) -> bool:
    return check_tracking(spec)
