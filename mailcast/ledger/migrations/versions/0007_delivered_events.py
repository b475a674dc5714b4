"""delivered events: a provider's delivery confirmation (SES, SendGrid, Mailgun, Mailjet
webhooks; a DSN with Action: delivered) is an event of kind ``delivered`` on its delivery

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30

Only the CHECK constraint on ``events.kind`` changes. Postgres swaps the constraint; SQLite
cannot alter a constraint, so the table is rebuilt from its own DDL (views dropped before and
created again after, as revision 0003 defines them: no later revision changed them).
"""

import importlib.util
import re
from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OLD = ("bounce", "open", "click", "unsubscribe", "complaint", "deferral")
NEW = (*OLD, "delivered")


def _check(kinds: tuple[str, ...]) -> str:
    return "kind IN (" + ", ".join(f"'{k}'" for k in kinds) + ")"


def _migration_0003():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("0003_tracking.py")
    spec = importlib.util.spec_from_file_location("_mailcast_migration_0003", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _swap(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.drop_constraint("ck_events_kind", "events", type_="check")
        op.create_check_constraint("ck_events_kind", "events", _check(new))
        return
    views = _migration_0003()
    for name in reversed(views.VIEW_NAMES):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    table_sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    ).scalar_one()
    index_sql = list(
        bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
            " AND sql IS NOT NULL"
        ).scalars()
    )
    if _check(old) not in table_sql:
        raise RuntimeError("events.kind's CHECK constraint is not the one expected")
    rebuilt = re.sub(
        r'^CREATE TABLE\s+(?:"events"|events)',
        "CREATE TABLE events_rebuilt",
        table_sql.replace(_check(old), _check(new)),
        count=1,
    )
    op.execute(rebuilt)
    op.execute("INSERT INTO events_rebuilt SELECT * FROM events")
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_rebuilt RENAME TO events")
    for sql in index_sql:
        op.execute(sql)
    for name in views.VIEW_NAMES:
        op.execute(f"CREATE VIEW {name} AS {views.view_sql(name, 'sqlite')}")


def upgrade() -> None:
    _swap(OLD, NEW)


def downgrade() -> None:
    op.execute("DELETE FROM events WHERE kind = 'delivered'")
    _swap(NEW, OLD)
