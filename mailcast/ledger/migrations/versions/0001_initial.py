"""campaigns, runs and deliveries

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dry_run", sa.Boolean, nullable=False),
        sa.Column("spec", Json, nullable=False),
        sa.Column("transport", sa.String(500)),
        sa.Column("flow_run_id", sa.String(36)),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("columns", Json, nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
    )
    op.create_index("ix_runs_campaign_id", "runs", ["campaign_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("row_no", sa.Integer, nullable=False),
        sa.Column("address", sa.String(998), nullable=False),
        sa.Column("address_key", sa.String(320)),
        sa.Column("fields", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("smtp_code", sa.Integer),
        sa.Column("smtp_reply", sa.Text),
        sa.Column("message_id", sa.String(300)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("sent_at", TS),
        sa.UniqueConstraint("run_id", "row_no", name="uq_deliveries_run_row"),
        sa.UniqueConstraint("run_id", "address_key", name="uq_deliveries_run_address"),
    )
    op.create_index("ix_deliveries_run_status", "deliveries", ["run_id", "status"])
    op.create_index("ix_deliveries_address_key", "deliveries", ["address_key"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_index("ix_runs_campaign_id", table_name="runs")
    op.drop_table("runs")
    op.drop_table("campaigns")
