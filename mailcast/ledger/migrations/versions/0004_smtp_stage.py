"""deliveries.smtp_stage: the SMTP command whose reply a row records (MAIL, RCPT, DATA)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Rows written before this revision get their stage from what mailcast wrote in their reason
(the only place it was kept then); a row refused by mailcast itself (an internationalized
address for a server without SMTPUTF8, recorded as "553" then) loses the code it never got from
the server. Statuses are unchanged (the enums in models.py store the same strings).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# mailcast's own refusal, recorded as if the server had said 553 at MAIL: no code, no stage.
_OWN_REFUSAL = "%server does not support SMTPUTF8%"
# (stage, reason patterns) for rows written before this revision.
_BACKFILL = (
    ("MAIL", ("rejected at MAIL:%", "%connection lost during MAIL%")),
    ("RCPT", ("hard bounce:%", "rejected at RCPT:%", "%connection lost during RCPT%")),
    ("DATA", ("rejected at DATA:%", "%connection lost during DATA%")),
)


def upgrade() -> None:
    op.add_column("deliveries", sa.Column("smtp_stage", sa.String(8), nullable=True))
    d = sa.table(
        "deliveries",
        sa.column("status", sa.String),
        sa.column("reason", sa.Text),
        sa.column("smtp_code", sa.Integer),
        sa.column("smtp_reply", sa.Text),
        sa.column("smtp_stage", sa.String),
    )
    op.execute(
        d.update()
        .where(d.c.reason.like(_OWN_REFUSAL))
        .values(smtp_code=None, smtp_reply=None)
    )
    op.execute(
        d.update().where(d.c.status == "sent", d.c.smtp_code.is_not(None)).values(smtp_stage="DATA")
    )
    for stage, patterns in _BACKFILL:
        op.execute(
            d.update()
            .where(
                d.c.smtp_stage.is_(None),
                d.c.status != "sent",
                sa.or_(*(d.c.reason.like(p) for p in patterns)),
                ~d.c.reason.like(_OWN_REFUSAL),
            )
            .values(smtp_stage=stage)
        )


def downgrade() -> None:
    op.drop_column("deliveries", "smtp_stage")
