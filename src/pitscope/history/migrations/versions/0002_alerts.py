"""Wear alerts per part, with their acknowledgement."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("part", sa.String(200), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("values", sa.JSON, nullable=False),
        sa.Column("raised_at", UTC_TIME, nullable=False),
        sa.Column("inspection_id", ROW_ID, sa.ForeignKey("inspections.id", ondelete="SET NULL")),
        sa.Column("cleared_at", UTC_TIME),
        sa.Column("acknowledged_at", UTC_TIME),
        sa.Column("acknowledged_by", sa.String(200)),
    )
    op.create_index("ix_alerts_part_rule", "alerts", ["part", "rule"])


def downgrade() -> None:
    op.drop_table("alerts")
