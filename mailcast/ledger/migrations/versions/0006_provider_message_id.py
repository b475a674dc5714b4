"""provider_message_id: deliveries.provider_message_id, the id an API provider (SES, SendGrid,
Mailgun, Mailjet, Gmail) gave the message, so that its webhook events find their delivery

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "deliveries", sa.Column("provider_message_id", sa.String(300), nullable=True)
    )
    op.create_index(
        "ix_deliveries_provider_message_id", "deliveries", ["provider_message_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_provider_message_id", table_name="deliveries")
    op.drop_column("deliveries", "provider_message_id")
