"""The ledger's SQL views for analysts: ``campaign_summary``, ``delivery_facts``,
``campaign_totals`` and ``link_clicks`` (migration 0003), and the per-list figures
``list_members``, ``list_growth`` and ``list_engagement`` (migration 0009).

This module holds the *current* definitions (the ones the head migration creates; a test checks
that they match). Each migration that creates or changes a view keeps its own frozen copy of the
SQL, so editing this module never alters a migration that was already applied. To change a
view: edit it here, add a migration that drops and recreates it with a copy of the new SQL, and
update docs/schema.md.

The SQL is portable between SQLite and Postgres except for two fragments (the UTC day of a
timestamp, and a JSON field of an event's ``detail``), which are filled in per dialect. Counts
use ``SUM(CASE WHEN … THEN 1 ELSE 0 END)``, rates ``CAST(x AS DOUBLE PRECISION) / NULLIF(y, 0)``
(NULL when there is nothing to divide by). Flags (``opened`` …) are ``boolean`` on Postgres and
0/1 on SQLite, like ``dry_run``.

SQLite caveat for later migrations: a batch (copy-and-rename) alteration of a table a view reads
fails while the view exists; drop the views first and recreate them afterwards (the list views
read lists, memberships, contacts, suppressions, consent_records and runs).
"""

from __future__ import annotations

from sqlalchemy import Connection

# In creation order (campaign_totals and list_engagement read campaign_summary); dropped in
# reverse. The first four are migration 0003's, the list views migration 0009's.
VIEW_NAMES = (
    "campaign_summary", "delivery_facts", "campaign_totals", "link_clicks", "list_members",
    "list_growth", "list_engagement",
)  # fmt: skip
LIST_VIEW_NAMES = ("list_members", "list_growth", "list_engagement")

# Per-dialect fragments. sent_day is the UTC calendar day (SQLite stores UTC timestamps as text).
_FRAGMENTS: dict[str, dict[str, str]] = {
    "postgresql": {
        "consent_day": "CAST(cr.at AT TIME ZONE 'UTC' AS DATE)",
        "run_list": "r.spec -> 'recipients' ->> 'list'",
        "sent_day": "CAST(d.sent_at AT TIME ZONE 'UTC' AS DATE)",
        "bounce_type": "ev.detail ->> 'type'",
        "link_id": (
            "CASE WHEN jsonb_typeof(ev.detail -> 'link_id') = 'number'"
            " THEN CAST(CAST(ev.detail ->> 'link_id' AS NUMERIC) AS BIGINT) END"
        ),
    },
    "sqlite": {
        "consent_day": "date(cr.at)",
        "run_list": (
            "CASE WHEN json_valid(r.spec) THEN json_extract(r.spec, '$.recipients.list') END"
        ),
        "sent_day": "date(d.sent_at)",
        "bounce_type": (
            "CASE WHEN json_valid(ev.detail) THEN json_extract(ev.detail, '$.type') END"
        ),
        "link_id": (
            "CASE WHEN json_valid(ev.detail) AND json_type(ev.detail, '$.link_id')"
            " IN ('integer', 'real') THEN CAST(json_extract(ev.detail, '$.link_id') AS INTEGER)"
            " END"
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
    FROM ({events_per_delivery}
    ) pd
    JOIN deliveries dd ON dd.id = pd.delivery_id
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


def _total(column: str) -> str:
    return f"CAST(SUM(s.{column}) AS BIGINT) AS {column}"


def _ratio(name: str, num: str, den: str) -> str:
    return (
        f"CAST(SUM({num}) AS DOUBLE PRECISION)"
        f" / NULLIF(CAST(SUM({den}) AS DOUBLE PRECISION), 0) AS {name}"
    )


# Per campaign (and dry_run): the runs' counts summed, rates recomputed from the sums.
_CAMPAIGN_TOTALS = (
    """
SELECT
    s.campaign AS campaign,
    s.dry_run AS dry_run,
    COUNT(*) AS runs,
    MIN(s.created_at) AS first_run_at,
    MAX(s.created_at) AS last_run_at,
    """
    + ",\n    ".join(
        _total(c)
        for c in (
            "recipients", "sent", "failed", "delivered", "bounces", "hard_bounces",
            "soft_bounces", "opens", "unique_opens", "clicks", "unique_clicks", "unsubscribes",
            "complaints",
        )
    )
    + ",\n    "
    + ",\n    ".join(
        (
            _ratio("delivery_rate", "s.sent", "s.sent + s.failed"),
            _ratio("delivered_rate", "s.delivered", "s.sent + s.failed"),
            _ratio("open_rate", "s.unique_opens", "s.sent"),
            _ratio("click_rate", "s.unique_clicks", "s.sent"),
            _ratio("click_to_open_rate", "s.unique_clicks", "s.unique_opens"),
            _ratio("bounce_rate", "s.bounces", "s.sent"),
            _ratio("hard_bounce_rate", "s.hard_bounces", "s.sent + s.failed"),
            _ratio("soft_bounce_rate", "s.soft_bounces", "s.sent + s.failed"),
            _ratio("unsubscribe_rate", "s.unsubscribes", "s.sent"),
            _ratio("complaint_rate", "s.complaints", "s.delivered"),
        )
    )
    + """
FROM campaign_summary s
GROUP BY s.campaign, s.dry_run
"""
)  # fmt: skip

# One row per tracked link of a run: its clicks (a click event's detail names its link_id).
_LINK_CLICKS = """
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
        {link_id} AS link_id,
        COUNT(*) AS clicks,
        COUNT(DISTINCT ev.delivery_id) AS unique_clicks
    FROM events ev
    WHERE ev.kind = 'click'
    GROUP BY ev.run_id, {link_id}
) k ON k.link_id = l.id AND k.run_id = l.run_id
"""

# One row per list: its members by status, and how many a campaign to it would plan now.
_LIST_MEMBERS = """
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
"""

# One row per list and UTC day with consent records about it: who joined, who left.
_LIST_GROWTH = """
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
        {consent_day} AS day,
        SUM(CASE WHEN cr.action = 'subscribe' THEN 1 ELSE 0 END) AS subscribes,
        SUM(CASE WHEN cr.action = 'confirm' THEN 1 ELSE 0 END) AS confirms,
        SUM(CASE WHEN cr.action = 'unsubscribe' THEN 1 ELSE 0 END) AS unsubscribes,
        SUM(CASE WHEN (cr.action = 'subscribe' AND l.optin = 'single') OR cr.action = 'confirm'
            THEN 1 ELSE 0 END) AS joined
    FROM consent_records cr
    JOIN lists l ON l.id = cr.list_id
    GROUP BY cr.list_id, l.name, {consent_day}
) g
"""

# One row per list: the figures of the real runs sent to it (recipients: {list: NAME}).
_LIST_ENGAGEMENT = """
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
LEFT JOIN runs r ON ({run_list}) = l.name AND NOT r.dry_run
LEFT JOIN campaign_summary s ON s.run_id = r.id
GROUP BY l.id, l.name
"""

_VIEWS = {
    "campaign_summary": _CAMPAIGN_SUMMARY,
    "delivery_facts": _DELIVERY_FACTS,
    "campaign_totals": _CAMPAIGN_TOTALS,
    "link_clicks": _LINK_CLICKS,
    "list_members": _LIST_MEMBERS,
    "list_growth": _LIST_GROWTH,
    "list_engagement": _LIST_ENGAGEMENT,
}

COLUMNS: dict[str, tuple[str, ...]] = {
    "campaign_summary": (
        "run_id", "campaign", "dry_run", "run_status", "created_at", "recipients", "sent",
        "failed", "skipped", "unknown", "pending", "opens", "unique_opens", "clicks",
        "unique_clicks", "bounces", "hard_bounces", "unsubscribes", "complaints",
        "delivery_rate", "open_rate", "click_rate", "click_to_open_rate", "bounce_rate",
        "unsubscribe_rate", "delivered", "soft_bounces", "delivered_rate", "hard_bounce_rate",
        "soft_bounce_rate", "complaint_rate",
    ),
    "delivery_facts": (
        "delivery_id", "run_id", "campaign", "run_created_at", "dry_run", "row_no", "address",
        "address_key", "status", "reason", "attempts", "smtp_code", "message_id", "sent_at",
        "sent_day", "opens", "clicks", "opened", "clicked", "bounced", "hard_bounced",
        "unsubscribed", "complained",
    ),
    "campaign_totals": (
        "campaign", "dry_run", "runs", "first_run_at", "last_run_at", "recipients", "sent",
        "failed", "delivered", "bounces", "hard_bounces", "soft_bounces", "opens",
        "unique_opens", "clicks", "unique_clicks", "unsubscribes", "complaints",
        "delivery_rate", "delivered_rate", "open_rate", "click_rate", "click_to_open_rate",
        "bounce_rate", "hard_bounce_rate", "soft_bounce_rate", "unsubscribe_rate",
        "complaint_rate",
    ),
    "link_clicks": (
        "link_id", "run_id", "campaign", "position", "url", "clicks", "unique_clicks",
    ),
    "list_members": (
        "list_id", "list", "optin", "members", "confirmed", "unconfirmed", "unsubscribed",
        "blocklisted", "sendable",
    ),
    "list_growth": (
        "list_id", "list", "day", "subscribes", "confirms", "unsubscribes", "joined", "net",
        "cumulative_net",
    ),
    "list_engagement": (
        "list_id", "list", "runs", "last_run_at", "sent", "opened", "clicked", "unsubscribed",
        "bounced", "open_rate", "click_rate", "unsubscribe_rate",
    ),
}  # fmt: skip


def view_sql(name: str, dialect: str) -> str:
    """The SELECT behind view ``name`` for ``dialect`` (``postgresql`` or ``sqlite``)."""
    if dialect not in _FRAGMENTS:
        raise ValueError(f"the ledger's views support postgresql and sqlite, not {dialect!r}")
    frag = _FRAGMENTS[dialect]
    per_delivery = _EVENTS_PER_DELIVERY.format(**frag)
    return _VIEWS[name].format(events_per_delivery=per_delivery, **frag)


def create_views(conn: Connection) -> None:
    for name in VIEW_NAMES:
        conn.exec_driver_sql(f"CREATE VIEW {name} AS {view_sql(name, conn.dialect.name)}")


def drop_views(conn: Connection) -> None:
    for name in reversed(VIEW_NAMES):
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {name}")
