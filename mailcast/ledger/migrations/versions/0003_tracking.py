"""tracking: suppressions, links and inbound_messages tables; views with delivered, soft bounces
and more rates, plus campaign_totals and link_clicks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

The view SQL below is a frozen copy of mailcast/ledger/views.py as of this revision, rendered per
dialect (later changes to views.py belong in a new migration, never here). Downgrading restores
the views of 0002 (taken from that migration's own frozen copy).
"""

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)

SUPPRESSION_REASONS = ("unsubscribed", "hard_bounce", "complaint", "manual")
VIEW_NAMES = ("campaign_summary", "delivery_facts", "campaign_totals", "link_clicks")
OLD_VIEW_NAMES = ("campaign_summary", "delivery_facts")

_SQL: dict[str, dict[str, str]] = {
    "postgresql": {
        "campaign_summary": """
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
        AS unsubscribe_rate,
    COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0) AS delivered,
    COALESCE(es.bounces, 0) - COALESCE(es.hard_bounces, 0) AS soft_bounces,
    CAST(COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0) AS DOUBLE PRECISION)
        / NULLIF(ds.sent + ds.failed, 0) AS delivered_rate,
    CAST(COALESCE(es.hard_bounces, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent + ds.failed, 0)
        AS hard_bounce_rate,
    CAST(COALESCE(es.bounces, 0) - COALESCE(es.hard_bounces, 0) AS DOUBLE PRECISION)
        / NULLIF(ds.sent + ds.failed, 0) AS soft_bounce_rate,
    CAST(COALESCE(es.complaints, 0) AS DOUBLE PRECISION)
        / NULLIF(COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0), 0) AS complaint_rate
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
        SUM(pd.complained) AS complaints,
        SUM(CASE WHEN pd.bounced = 1 AND dd.status = 'sent' THEN 1 ELSE 0 END) AS sent_bounced
    FROM (
        SELECT
            ev.run_id,
            ev.delivery_id,
            SUM(CASE WHEN ev.kind = 'open' THEN 1 ELSE 0 END) AS opens,
            SUM(CASE WHEN ev.kind = 'click' THEN 1 ELSE 0 END) AS clicks,
            MAX(CASE WHEN ev.kind = 'bounce' THEN 1 ELSE 0 END) AS bounced,
            MAX(CASE WHEN ev.kind = 'bounce' AND (ev.detail ->> 'type') = 'hard'
                THEN 1 ELSE 0 END) AS hard_bounced,
            MAX(CASE WHEN ev.kind = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribed,
            MAX(CASE WHEN ev.kind = 'complaint' THEN 1 ELSE 0 END) AS complained
        FROM events ev
        GROUP BY ev.run_id, ev.delivery_id
    ) pd
    JOIN deliveries dd ON dd.id = pd.delivery_id
    GROUP BY pd.run_id
) es ON es.run_id = r.id
""",
        "delivery_facts": """
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
    CAST(d.sent_at AT TIME ZONE 'UTC' AS DATE) AS sent_day,
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
LEFT JOIN (
        SELECT
            ev.run_id,
            ev.delivery_id,
            SUM(CASE WHEN ev.kind = 'open' THEN 1 ELSE 0 END) AS opens,
            SUM(CASE WHEN ev.kind = 'click' THEN 1 ELSE 0 END) AS clicks,
            MAX(CASE WHEN ev.kind = 'bounce' THEN 1 ELSE 0 END) AS bounced,
            MAX(CASE WHEN ev.kind = 'bounce' AND (ev.detail ->> 'type') = 'hard'
                THEN 1 ELSE 0 END) AS hard_bounced,
            MAX(CASE WHEN ev.kind = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribed,
            MAX(CASE WHEN ev.kind = 'complaint' THEN 1 ELSE 0 END) AS complained
        FROM events ev
        GROUP BY ev.run_id, ev.delivery_id
) pd ON pd.delivery_id = d.id AND pd.run_id = d.run_id
""",
        "campaign_totals": """
SELECT
    s.campaign AS campaign,
    s.dry_run AS dry_run,
    COUNT(*) AS runs,
    MIN(s.created_at) AS first_run_at,
    MAX(s.created_at) AS last_run_at,
    CAST(SUM(s.recipients) AS BIGINT) AS recipients,
    CAST(SUM(s.sent) AS BIGINT) AS sent,
    CAST(SUM(s.failed) AS BIGINT) AS failed,
    CAST(SUM(s.delivered) AS BIGINT) AS delivered,
    CAST(SUM(s.bounces) AS BIGINT) AS bounces,
    CAST(SUM(s.hard_bounces) AS BIGINT) AS hard_bounces,
    CAST(SUM(s.soft_bounces) AS BIGINT) AS soft_bounces,
    CAST(SUM(s.opens) AS BIGINT) AS opens,
    CAST(SUM(s.unique_opens) AS BIGINT) AS unique_opens,
    CAST(SUM(s.clicks) AS BIGINT) AS clicks,
    CAST(SUM(s.unique_clicks) AS BIGINT) AS unique_clicks,
    CAST(SUM(s.unsubscribes) AS BIGINT) AS unsubscribes,
    CAST(SUM(s.complaints) AS BIGINT) AS complaints,
    CAST(SUM(s.sent) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS delivery_rate,
    CAST(SUM(s.delivered) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS delivered_rate,
    CAST(SUM(s.unique_opens) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS open_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS click_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.unique_opens) AS DOUBLE PRECISION), 0) AS click_to_open_rate,
    CAST(SUM(s.bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS bounce_rate,
    CAST(SUM(s.hard_bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS hard_bounce_rate,
    CAST(SUM(s.soft_bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS soft_bounce_rate,
    CAST(SUM(s.unsubscribes) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS unsubscribe_rate,
    CAST(SUM(s.complaints) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.delivered) AS DOUBLE PRECISION), 0) AS complaint_rate
FROM campaign_summary s
GROUP BY s.campaign, s.dry_run
""",
        "link_clicks": """
SELECT
    l.id AS link_id,
    l.run_id AS run_id,
    c.name AS campaign,
    l.position AS position,
    l.url AS url,
    COALESCE(k.clicks, 0) AS clicks,
    COALESCE(k.unique_clicks, 0) AS unique_clicks
FROM links l
JOIN runs r ON r.id = l.run_id
JOIN campaigns c ON c.id = r.campaign_id
LEFT JOIN (
    SELECT
        ev.run_id AS run_id,
        CASE WHEN jsonb_typeof(ev.detail -> 'link_id') = 'number' THEN CAST(CAST(ev.detail ->> 'link_id' AS NUMERIC) AS BIGINT) END AS link_id,
        COUNT(*) AS clicks,
        COUNT(DISTINCT ev.delivery_id) AS unique_clicks
    FROM events ev
    WHERE ev.kind = 'click'
    GROUP BY ev.run_id, CASE WHEN jsonb_typeof(ev.detail -> 'link_id') = 'number' THEN CAST(CAST(ev.detail ->> 'link_id' AS NUMERIC) AS BIGINT) END
) k ON k.link_id = l.id AND k.run_id = l.run_id
""",
    },
    "sqlite": {
        "campaign_summary": """
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
        AS unsubscribe_rate,
    COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0) AS delivered,
    COALESCE(es.bounces, 0) - COALESCE(es.hard_bounces, 0) AS soft_bounces,
    CAST(COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0) AS DOUBLE PRECISION)
        / NULLIF(ds.sent + ds.failed, 0) AS delivered_rate,
    CAST(COALESCE(es.hard_bounces, 0) AS DOUBLE PRECISION) / NULLIF(ds.sent + ds.failed, 0)
        AS hard_bounce_rate,
    CAST(COALESCE(es.bounces, 0) - COALESCE(es.hard_bounces, 0) AS DOUBLE PRECISION)
        / NULLIF(ds.sent + ds.failed, 0) AS soft_bounce_rate,
    CAST(COALESCE(es.complaints, 0) AS DOUBLE PRECISION)
        / NULLIF(COALESCE(ds.sent, 0) - COALESCE(es.sent_bounced, 0), 0) AS complaint_rate
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
        SUM(pd.complained) AS complaints,
        SUM(CASE WHEN pd.bounced = 1 AND dd.status = 'sent' THEN 1 ELSE 0 END) AS sent_bounced
    FROM (
        SELECT
            ev.run_id,
            ev.delivery_id,
            SUM(CASE WHEN ev.kind = 'open' THEN 1 ELSE 0 END) AS opens,
            SUM(CASE WHEN ev.kind = 'click' THEN 1 ELSE 0 END) AS clicks,
            MAX(CASE WHEN ev.kind = 'bounce' THEN 1 ELSE 0 END) AS bounced,
            MAX(CASE WHEN ev.kind = 'bounce' AND (CASE WHEN json_valid(ev.detail) THEN json_extract(ev.detail, '$.type') END) = 'hard'
                THEN 1 ELSE 0 END) AS hard_bounced,
            MAX(CASE WHEN ev.kind = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribed,
            MAX(CASE WHEN ev.kind = 'complaint' THEN 1 ELSE 0 END) AS complained
        FROM events ev
        GROUP BY ev.run_id, ev.delivery_id
    ) pd
    JOIN deliveries dd ON dd.id = pd.delivery_id
    GROUP BY pd.run_id
) es ON es.run_id = r.id
""",
        "delivery_facts": """
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
    date(d.sent_at) AS sent_day,
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
LEFT JOIN (
        SELECT
            ev.run_id,
            ev.delivery_id,
            SUM(CASE WHEN ev.kind = 'open' THEN 1 ELSE 0 END) AS opens,
            SUM(CASE WHEN ev.kind = 'click' THEN 1 ELSE 0 END) AS clicks,
            MAX(CASE WHEN ev.kind = 'bounce' THEN 1 ELSE 0 END) AS bounced,
            MAX(CASE WHEN ev.kind = 'bounce' AND (CASE WHEN json_valid(ev.detail) THEN json_extract(ev.detail, '$.type') END) = 'hard'
                THEN 1 ELSE 0 END) AS hard_bounced,
            MAX(CASE WHEN ev.kind = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribed,
            MAX(CASE WHEN ev.kind = 'complaint' THEN 1 ELSE 0 END) AS complained
        FROM events ev
        GROUP BY ev.run_id, ev.delivery_id
) pd ON pd.delivery_id = d.id AND pd.run_id = d.run_id
""",
        "campaign_totals": """
SELECT
    s.campaign AS campaign,
    s.dry_run AS dry_run,
    COUNT(*) AS runs,
    MIN(s.created_at) AS first_run_at,
    MAX(s.created_at) AS last_run_at,
    CAST(SUM(s.recipients) AS BIGINT) AS recipients,
    CAST(SUM(s.sent) AS BIGINT) AS sent,
    CAST(SUM(s.failed) AS BIGINT) AS failed,
    CAST(SUM(s.delivered) AS BIGINT) AS delivered,
    CAST(SUM(s.bounces) AS BIGINT) AS bounces,
    CAST(SUM(s.hard_bounces) AS BIGINT) AS hard_bounces,
    CAST(SUM(s.soft_bounces) AS BIGINT) AS soft_bounces,
    CAST(SUM(s.opens) AS BIGINT) AS opens,
    CAST(SUM(s.unique_opens) AS BIGINT) AS unique_opens,
    CAST(SUM(s.clicks) AS BIGINT) AS clicks,
    CAST(SUM(s.unique_clicks) AS BIGINT) AS unique_clicks,
    CAST(SUM(s.unsubscribes) AS BIGINT) AS unsubscribes,
    CAST(SUM(s.complaints) AS BIGINT) AS complaints,
    CAST(SUM(s.sent) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS delivery_rate,
    CAST(SUM(s.delivered) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS delivered_rate,
    CAST(SUM(s.unique_opens) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS open_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS click_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.unique_opens) AS DOUBLE PRECISION), 0) AS click_to_open_rate,
    CAST(SUM(s.bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS bounce_rate,
    CAST(SUM(s.hard_bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS hard_bounce_rate,
    CAST(SUM(s.soft_bounces) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent + s.failed) AS DOUBLE PRECISION), 0) AS soft_bounce_rate,
    CAST(SUM(s.unsubscribes) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS unsubscribe_rate,
    CAST(SUM(s.complaints) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.delivered) AS DOUBLE PRECISION), 0) AS complaint_rate
FROM campaign_summary s
GROUP BY s.campaign, s.dry_run
""",
        "link_clicks": """
SELECT
    l.id AS link_id,
    l.run_id AS run_id,
    c.name AS campaign,
    l.position AS position,
    l.url AS url,
    COALESCE(k.clicks, 0) AS clicks,
    COALESCE(k.unique_clicks, 0) AS unique_clicks
FROM links l
JOIN runs r ON r.id = l.run_id
JOIN campaigns c ON c.id = r.campaign_id
LEFT JOIN (
    SELECT
        ev.run_id AS run_id,
        CASE WHEN json_valid(ev.detail) AND json_type(ev.detail, '$.link_id') IN ('integer', 'real') THEN CAST(json_extract(ev.detail, '$.link_id') AS INTEGER) END AS link_id,
        COUNT(*) AS clicks,
        COUNT(DISTINCT ev.delivery_id) AS unique_clicks
    FROM events ev
    WHERE ev.kind = 'click'
    GROUP BY ev.run_id, CASE WHEN json_valid(ev.detail) AND json_type(ev.detail, '$.link_id') IN ('integer', 'real') THEN CAST(json_extract(ev.detail, '$.link_id') AS INTEGER) END
) k ON k.link_id = l.id AND k.run_id = l.run_id
""",
    },
}


def view_sql(name: str, dialect: str) -> str:
    if dialect not in _SQL:
        raise ValueError(f"the ledger's views support postgresql and sqlite, not {dialect!r}")
    return _SQL[dialect][name]


def _drop_views(names: tuple[str, ...]) -> None:
    for name in reversed(names):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    _drop_views(OLD_VIEW_NAMES)
    op.create_table(
        "suppressions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("address_key", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("source", sa.String(200)),
        sa.Column(
            "delivery_id", BigId, sa.ForeignKey("deliveries.id", ondelete="SET NULL")
        ),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint(
            "reason IN (" + ", ".join(f"'{r}'" for r in SUPPRESSION_REASONS) + ")",
            name="ck_suppressions_reason",
        ),
        sa.UniqueConstraint("address_key", name="uq_suppressions_address_key"),
    )
    op.create_table(
        "links",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column(
            "run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("url_hash", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("run_id", "url_hash", name="uq_links_run_url"),
    )
    op.create_table(
        "inbound_messages",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("message_key", sa.String(400), nullable=False),
        sa.Column("mailbox", sa.String(500), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        sa.Column(
            "delivery_id", BigId, sa.ForeignKey("deliveries.id", ondelete="SET NULL")
        ),
        sa.Column("detail", Json),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("message_key", name="uq_inbound_messages_key"),
    )
    op.create_index("ix_inbound_messages_delivery_id", "inbound_messages", ["delivery_id"])
    dialect = op.get_bind().dialect.name
    for name in VIEW_NAMES:
        op.execute(f"CREATE VIEW {name} AS {view_sql(name, dialect)}")


def _migration_0002():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("0002_events_views.py")
    spec = importlib.util.spec_from_file_location("_mailcast_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    _drop_views(VIEW_NAMES)
    op.drop_index("ix_inbound_messages_delivery_id", table_name="inbound_messages")
    op.drop_table("inbound_messages")
    op.drop_table("links")
    op.drop_table("suppressions")
    old = _migration_0002()
    dialect = op.get_bind().dialect.name
    for name in OLD_VIEW_NAMES:
        op.execute(f"CREATE VIEW {name} AS {old.view_sql(name, dialect)}")
