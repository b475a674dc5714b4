"""audiences: contacts, lists, memberships, consent_records, segments, erased_contacts and
contact_sends (recipients kept in mailcast, issue 12)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def _in(column: str, *values: str) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade() -> None:
    op.create_table(
        "contacts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("address_key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(300)),
        sa.Column("attributes", Json, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("address_key", name="uq_contacts_address_key"),
        sa.CheckConstraint(_in("status", "enabled", "blocklisted"), name="ck_contacts_status"),
    )
    op.create_index(
        "ix_contacts_attributes", "contacts", ["attributes"], postgresql_using="gin"
    )
    op.create_table(
        "lists",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("optin", sa.String(8), nullable=False),
        sa.Column("tags", Json, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("name", name="uq_lists_name"),
        sa.CheckConstraint(_in("optin", "single", "double"), name="ck_lists_optin"),
    )
    op.create_table(
        "memberships",
        sa.Column(
            "contact_id",
            BigId,
            sa.ForeignKey("contacts.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            _in("status", "unconfirmed", "confirmed", "unsubscribed"),
            name="ck_memberships_status",
        ),
    )
    op.create_index("ix_memberships_list_status", "memberships", ["list_id", "status"])
    op.create_table(
        "consent_records",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("contact_id", BigId, sa.ForeignKey("contacts.id", ondelete="SET NULL")),
        sa.Column("list_id", sa.Integer, sa.ForeignKey("lists.id", ondelete="SET NULL")),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("source", sa.String(500)),
        sa.Column("consent_text", sa.Text),
        sa.Column("at", TS, nullable=False),
        sa.CheckConstraint(
            _in(
                "action", "subscribe", "confirm", "unsubscribe", "blocklist", "unblocklist",
                "delete", "export", "erase",
            ),
            name="ck_consent_records_action",
        ),  # fmt: skip
        sa.CheckConstraint(
            _in(
                "method", "import", "form", "api", "cli", "one_click", "preferences",
                "confirmation",
            ),
            name="ck_consent_records_method",
        ),  # fmt: skip
    )
    op.create_index("ix_consent_records_contact", "consent_records", ["contact_id"])
    op.create_index("ix_consent_records_at", "consent_records", ["at"])
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("expression", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("name", name="uq_segments_name"),
    )
    op.create_table(
        "erased_contacts",
        sa.Column("address_hash", sa.String(64), primary_key=True),
        sa.Column("erased_at", TS, nullable=False),
    )
    op.create_table(
        "contact_sends",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("address_key", sa.String(320), primary_key=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="SET NULL")),
        sa.Column("sent_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in ("contact_sends", "erased_contacts", "segments", "consent_records"):
        op.drop_table(table)
    op.drop_index("ix_memberships_list_status", table_name="memberships")
    op.drop_table("memberships")
    op.drop_table("lists")
    op.drop_index("ix_contacts_attributes", table_name="contacts")
    op.drop_table("contacts")
