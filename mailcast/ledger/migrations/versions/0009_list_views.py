"""list views: list_members (members by status), list_growth (joins and unsubscribes per list
and day, from consent_records) and list_engagement (the figures of the real runs sent to each
list)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

The view SQL below is a frozen copy of mailcast/ledger/views.py as of this revision, rendered per
dialect (later changes to views.py belong in a new migration, never here). list_engagement reads
campaign_summary (migration 0003).
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

VIEW_NAMES = ('list_members', 'list_growth', 'list_engagement')

_SQL: dict[str, dict[str, str]] = {
    "postgresql": {
        "list_members": """
SELECT
    l.id AS list_id,
    l.name AS list,
    l.optin AS optin,
    COALESCE(m.members, 0) AS members,
    COALESCE(m.confirmed, 0) AS confirmed,
    COALESCE(m.unconfirmed, 0) AS unconfirmed,
    COALESCE(m.unsubscribed, 0) AS unsubscribed,
    COALESCE(m.blocklisted, 0) AS blocklisted,
    COALESCE(m.sendable, 0) AS sendable
FROM lists l
LEFT JOIN (
    SELECT
        mm.list_id AS list_id,
        COUNT(*) AS members,
        SUM(CASE WHEN mm.status = 'confirmed' THEN 1 ELSE 0 END) AS confirmed,
        SUM(CASE WHEN mm.status = 'unconfirmed' THEN 1 ELSE 0 END) AS unconfirmed,
        SUM(CASE WHEN mm.status = 'unsubscribed' THEN 1 ELSE 0 END) AS unsubscribed,
        SUM(CASE WHEN mm.status <> 'unsubscribed' AND c.status = 'blocklisted'
            THEN 1 ELSE 0 END) AS blocklisted,
        SUM(CASE WHEN c.status = 'enabled'
                AND (mm.status = 'confirmed' OR (mm.status = 'unconfirmed' AND ll.optin = 'single'))
                AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address_key = c.address_key)
            THEN 1 ELSE 0 END) AS sendable
    FROM memberships mm
    JOIN contacts c ON c.id = mm.contact_id
    JOIN lists ll ON ll.id = mm.list_id
    GROUP BY mm.list_id
) m ON m.list_id = l.id
""",
        "list_growth": """
SELECT
    g.list_id AS list_id,
    g.list AS list,
    g.day AS day,
    g.subscribes AS subscribes,
    g.confirms AS confirms,
    g.unsubscribes AS unsubscribes,
    g.joined AS joined,
    g.joined - g.unsubscribes AS net,
    SUM(g.joined - g.unsubscribes) OVER (PARTITION BY g.list_id ORDER BY g.day
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative_net
FROM (
    SELECT
        cr.list_id AS list_id,
        l.name AS list,
        CAST(cr.at AT TIME ZONE 'UTC' AS DATE) AS day,
        SUM(CASE WHEN cr.action = 'subscribe' THEN 1 ELSE 0 END) AS subscribes,
        SUM(CASE WHEN cr.action = 'confirm' THEN 1 ELSE 0 END) AS confirms,
        SUM(CASE WHEN cr.action = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribes,
        SUM(CASE WHEN (cr.action = 'subscribe' AND l.optin = 'single') OR cr.action = 'confirm'
            THEN 1 ELSE 0 END) AS joined
    FROM consent_records cr
    JOIN lists l ON l.id = cr.list_id
    GROUP BY cr.list_id, l.name, CAST(cr.at AT TIME ZONE 'UTC' AS DATE)
) g
""",
        "list_engagement": """
SELECT
    l.id AS list_id,
    l.name AS list,
    COUNT(s.run_id) AS runs,
    MAX(s.created_at) AS last_run_at,
    CAST(COALESCE(SUM(s.sent), 0) AS BIGINT) AS sent,
    CAST(COALESCE(SUM(s.unique_opens), 0) AS BIGINT) AS opened,
    CAST(COALESCE(SUM(s.unique_clicks), 0) AS BIGINT) AS clicked,
    CAST(COALESCE(SUM(s.unsubscribes), 0) AS BIGINT) AS unsubscribed,
    CAST(COALESCE(SUM(s.bounces), 0) AS BIGINT) AS bounced,
    CAST(SUM(s.unique_opens) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0)
        AS open_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION)
        / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS click_rate,
    CAST(SUM(s.unsubscribes) AS DOUBLE PRECISION)
        / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS unsubscribe_rate
FROM lists l
LEFT JOIN runs r ON (r.spec -> 'recipients' ->> 'list') = l.name AND NOT r.dry_run
LEFT JOIN campaign_summary s ON s.run_id = r.id
GROUP BY l.id, l.name
""",
    },
    "sqlite": {
        "list_members": """
SELECT
    l.id AS list_id,
    l.name AS list,
    l.optin AS optin,
    COALESCE(m.members, 0) AS members,
    COALESCE(m.confirmed, 0) AS confirmed,
    COALESCE(m.unconfirmed, 0) AS unconfirmed,
    COALESCE(m.unsubscribed, 0) AS unsubscribed,
    COALESCE(m.blocklisted, 0) AS blocklisted,
    COALESCE(m.sendable, 0) AS sendable
FROM lists l
LEFT JOIN (
    SELECT
        mm.list_id AS list_id,
        COUNT(*) AS members,
        SUM(CASE WHEN mm.status = 'confirmed' THEN 1 ELSE 0 END) AS confirmed,
        SUM(CASE WHEN mm.status = 'unconfirmed' THEN 1 ELSE 0 END) AS unconfirmed,
        SUM(CASE WHEN mm.status = 'unsubscribed' THEN 1 ELSE 0 END) AS unsubscribed,
        SUM(CASE WHEN mm.status <> 'unsubscribed' AND c.status = 'blocklisted'
            THEN 1 ELSE 0 END) AS blocklisted,
        SUM(CASE WHEN c.status = 'enabled'
                AND (mm.status = 'confirmed' OR (mm.status = 'unconfirmed' AND ll.optin = 'single'))
                AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address_key = c.address_key)
            THEN 1 ELSE 0 END) AS sendable
    FROM memberships mm
    JOIN contacts c ON c.id = mm.contact_id
    JOIN lists ll ON ll.id = mm.list_id
    GROUP BY mm.list_id
) m ON m.list_id = l.id
""",
        "list_growth": """
SELECT
    g.list_id AS list_id,
    g.list AS list,
    g.day AS day,
    g.subscribes AS subscribes,
    g.confirms AS confirms,
    g.unsubscribes AS unsubscribes,
    g.joined AS joined,
    g.joined - g.unsubscribes AS net,
    SUM(g.joined - g.unsubscribes) OVER (PARTITION BY g.list_id ORDER BY g.day
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cumulative_net
FROM (
    SELECT
        cr.list_id AS list_id,
        l.name AS list,
        date(cr.at) AS day,
        SUM(CASE WHEN cr.action = 'subscribe' THEN 1 ELSE 0 END) AS subscribes,
        SUM(CASE WHEN cr.action = 'confirm' THEN 1 ELSE 0 END) AS confirms,
        SUM(CASE WHEN cr.action = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribes,
        SUM(CASE WHEN (cr.action = 'subscribe' AND l.optin = 'single') OR cr.action = 'confirm'
            THEN 1 ELSE 0 END) AS joined
    FROM consent_records cr
    JOIN lists l ON l.id = cr.list_id
    GROUP BY cr.list_id, l.name, date(cr.at)
) g
""",
        "list_engagement": """
SELECT
    l.id AS list_id,
    l.name AS list,
    COUNT(s.run_id) AS runs,
    MAX(s.created_at) AS last_run_at,
    CAST(COALESCE(SUM(s.sent), 0) AS BIGINT) AS sent,
    CAST(COALESCE(SUM(s.unique_opens), 0) AS BIGINT) AS opened,
    CAST(COALESCE(SUM(s.unique_clicks), 0) AS BIGINT) AS clicked,
    CAST(COALESCE(SUM(s.unsubscribes), 0) AS BIGINT) AS unsubscribed,
    CAST(COALESCE(SUM(s.bounces), 0) AS BIGINT) AS bounced,
    CAST(SUM(s.unique_opens) AS DOUBLE PRECISION) / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0)
        AS open_rate,
    CAST(SUM(s.unique_clicks) AS DOUBLE PRECISION)
        / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS click_rate,
    CAST(SUM(s.unsubscribes) AS DOUBLE PRECISION)
        / NULLIF(CAST(SUM(s.sent) AS DOUBLE PRECISION), 0) AS unsubscribe_rate
FROM lists l
LEFT JOIN runs r ON (CASE WHEN json_valid(r.spec) THEN json_extract(r.spec, '$.recipients.list') END) = l.name AND NOT r.dry_run
LEFT JOIN campaign_summary s ON s.run_id = r.id
GROUP BY l.id, l.name
""",
    },
}


def view_sql(name: str, dialect: str) -> str:
    return _SQL[dialect][name]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name in VIEW_NAMES:
        op.execute(f"CREATE VIEW {name} AS {view_sql(name, dialect)}")


def downgrade() -> None:
    for name in reversed(VIEW_NAMES):
        op.execute(f"DROP VIEW IF EXISTS {name}")
