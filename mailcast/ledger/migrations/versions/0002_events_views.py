"""events table, analysts' indexes, and the campaign_summary and delivery_facts views

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The view SQL below is a frozen copy of mailcast/ledger/views.py as of this revision (later
changes to views.py belong in a new migration, never here).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)

EVENT_KINDS = ("bounce", "open", "click", "unsubscribe", "complaint", "deferral")
VIEW_NAMES = ("campaign_summary", "delivery_facts")

# Per-dialect fragments. sent_day is the UTC calendar day (SQLite stores UTC timestamps as text).
_FRAGMENTS: dict[str, dict[str, str]] = {
    "postgresql": {
        "sent_day": "CAST(d.sent_at AT TIME ZONE 'UTC' AS DATE)",
        "bounce_type": "ev.detail ->> 'type'",
    },
    "sqlite": {
        "sent_day": "date(d.sent_at)",
        "bounce_type": (
            "CASE WHEN json_valid(ev.detail) THEN json_extract(ev.detail, '$.type') END"
        ),
    },
}

# One row per (run, delivery) that has events: how many of each kind, and 0/1 flags.
_EVENTS_PER_DELIVERY = """
        SELECT
            ev.run_id,
            ev.delivery_id,
            SUM(CASE WHEN ev.kind = 'open' THEN 1 ELSE 0 END) AS opens,
            SUM(CASE WHEN ev.kind = 'click' THEN 1 ELSE 0 END) AS clicks,
            MAX(CASE WHEN ev.kind = 'bounce' THEN 1 ELSE 0 END) AS bounced,
            MAX(CASE WHEN ev.kind = 'bounce' AND ({bounce_type}) = 'hard'
                THEN 1 ELSE 0 END) AS hard_bounced,
            MAX(CASE WHEN ev.kind = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribed,
            MAX(CASE WHEN ev.kind = 'complaint' THEN 1 ELSE 0 END) AS complained
        FROM events ev
        GROUP BY ev.run_id, ev.delivery_id"""

_CAMPAIGN_SUMMARY = """
SELECT
    r.id AS run_id,
    c.name AS campaign,
    r.dry_run AS dry_run,
    r.status AS run_status,
    r.created_at AS created_at,
    COALESCE(ds.recipients, 0) AS recipients,
    COALESCE(ds.sent, 0) AS sent,
    COALESCE(ds.failed, 0) AS failed,
    COALESCE(ds.skipped, 0) AS skipped,
    COALESCE(ds.unknown, 0) AS unknown,
    COALESCE(ds.pending, 0) AS pending,
    COALESCE(es.opens, 0) AS opens,
    COALESCE(es.unique_opens, 0) AS unique_opens,
    COALESCE(es.clicks, 0) AS clicks,
    COALESCE(es.unique_clicks, 0) AS unique_clicks,
    COALESCE(es.bounces, 0) AS bounces,
    COALESCE(es.hard_bounces, 0) AS hard_bounces,
    COALESCE(es.unsubscribes, 0) AS unsubscribes,
    COALESCE(es.complaints, 0) AS complaints,
    CAST(ds.sent AS DOUBLE PRECISION) / NULLIF(ds.sent + ds.failed, 0) AS delivery_rate,
    CAST(COALESCE(es.unique_opens, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent, 0) AS open_rate,
    CAST(COALESCE(es.unique_clicks, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent, 0) AS click_rate,
    CAST(es.unique_clicks AS DOUBLE PRECISION) / NULLIF(es.unique_opens, 0)
        AS click_to_open_rate,
    CAST(COALESCE(es.bounces, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent, 0) AS bounce_rate,
    CAST(COALESCE(es.unsubscribes, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent, 0)
        AS unsubscribe_rate
FROM runs r
JOIN campaigns c ON c.id = r.campaign_id
LEFT JOIN (
    SELECT
        d.run_id,
        COUNT(*) AS recipients,
        SUM(CASE WHEN d.status = 'sent' THEN 1 ELSE 0 END) AS sent,
        SUM(CASE WHEN d.status = 'failed' THEN 1 ELSE 0 END) AS failed,
        SUM(CASE WHEN d.status = 'skipped' THEN 1 ELSE 0 END) AS skipped,
        SUM(CASE WHEN d.status = 'unknown' THEN 1 ELSE 0 END) AS unknown,
        SUM(CASE WHEN d.status IN ('pending', 'sending') THEN 1 ELSE 0 END) AS pending
    FROM deliveries d
    GROUP BY d.run_id
) ds ON ds.run_id = r.id
LEFT JOIN (
    SELECT
        pd.run_id,
        CAST(SUM(pd.opens) AS BIGINT) AS opens,
        SUM(CASE WHEN pd.opens > 0 THEN 1 ELSE 0 END) AS unique_opens,
        CAST(SUM(pd.clicks) AS BIGINT) AS clicks,
        SUM(CASE WHEN pd.clicks > 0 THEN 1 ELSE 0 END) AS unique_clicks,
        SUM(pd.bounced) AS bounces,
        SUM(pd.hard_bounced) AS hard_bounces,
        SUM(pd.unsubscribed) AS unsubscribes,
        SUM(pd.complained) AS complaints
    FROM ({events_per_delivery}
    ) pd
    GROUP BY pd.run_id
) es ON es.run_id = r.id
"""

_DELIVERY_FACTS = """
SELECT
    d.id AS delivery_id,
    d.run_id AS run_id,
    c.name AS campaign,
    r.created_at AS run_created_at,
    r.dry_run AS dry_run,
    d.row_no AS row_no,
    d.address AS address,
    d.address_key AS address_key,
    d.status AS status,
    d.reason AS reason,
    d.attempts AS attempts,
    d.smtp_code AS smtp_code,
    d.message_id AS message_id,
    d.sent_at AS sent_at,
    {sent_day} AS sent_day,
    COALESCE(pd.opens, 0) AS opens,
    COALESCE(pd.clicks, 0) AS clicks,
    COALESCE(pd.opens, 0) > 0 AS opened,
    COALESCE(pd.clicks, 0) > 0 AS clicked,
    COALESCE(pd.bounced, 0) = 1 AS bounced,
    COALESCE(pd.hard_bounced, 0) = 1 AS hard_bounced,
    COALESCE(pd.unsubscribed, 0) = 1 AS unsubscribed,
    COALESCE(pd.complained, 0) = 1 AS complained
FROM deliveries d
JOIN runs r ON r.id = d.run_id
JOIN campaigns c ON c.id = r.campaign_id
LEFT JOIN ({events_per_delivery}
) pd ON pd.delivery_id = d.id AND pd.run_id = d.run_id
"""

_VIEWS = {"campaign_summary": _CAMPAIGN_SUMMARY, "delivery_facts": _DELIVERY_FACTS}


def view_sql(name: str, dialect: str) -> str:
    if dialect not in _FRAGMENTS:
        raise ValueError(f"the ledger's views support postgresql and sqlite, not {dialect!r}")
    frag = _FRAGMENTS[dialect]
    per_delivery = _EVENTS_PER_DELIVERY.format(**frag)
    return _VIEWS[name].format(events_per_delivery=per_delivery, **frag)


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id", BigId, sa.ForeignKey("deliveries.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("detail", Json),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "kind IN (" + ", ".join(f"'{k}'" for k in EVENT_KINDS) + ")", name="ck_events_kind"
        ),
    )
    op.create_index("ix_events_run_kind", "events", ["run_id", "kind"])
    op.create_index("ix_events_delivery_id", "events", ["delivery_id"])
    op.create_index("ix_events_occurred_at", "events", ["occurred_at"])
    op.create_index("ix_deliveries_sent_at", "deliveries", ["sent_at"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    dialect = op.get_bind().dialect.name
    for name in VIEW_NAMES:
        op.execute(f"CREATE VIEW {name} AS {view_sql(name, dialect)}")


def downgrade() -> None:
    for name in reversed(VIEW_NAMES):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_index("ix_runs_created_at", table_name="runs")
    op.drop_index("ix_deliveries_sent_at", table_name="deliveries")
    op.drop_index("ix_events_occurred_at", table_name="events")
    op.drop_index("ix_events_delivery_id", table_name="events")
    op.drop_index("ix_events_run_kind", table_name="events")
    op.drop_table("events")
