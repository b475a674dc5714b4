"""handover: deliveries.claim_token and deliveries.handed_at (a crash leaves at most the message
each connection had on the wire in doubt)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD/DROP COLUMN (Postgres, SQLite 3.35+): no table rebuild, the views stay.
    op.add_column("deliveries", sa.Column("claim_token", sa.String(32), nullable=True))
    op.add_column("deliveries", sa.Column("handed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("deliveries", "handed_at")
    op.drop_column("deliveries", "claim_token")
