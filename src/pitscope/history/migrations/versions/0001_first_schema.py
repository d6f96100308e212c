"""The first schema: models, thresholds, inspections, events."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("pitscope_version", sa.String(40), nullable=False),
        sa.Column("training", sa.JSON),
        sa.Column("first_seen", UTC_TIME, nullable=False),
    )
    op.create_table(
        "thresholds",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("image_threshold", sa.Float, nullable=False),
        sa.Column("pixel_threshold", sa.Float, nullable=False),
        sa.Column("set_by", sa.String(200), nullable=False),
        sa.Column("how", sa.String(200), nullable=False),
        sa.Column("set_at", UTC_TIME, nullable=False),
        sa.UniqueConstraint("model_id", "version", name="uq_thresholds_model_version"),
    )
    op.create_table(
        "inspections",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("recorded_at", UTC_TIME, nullable=False),
        sa.Column("captured_at", UTC_TIME),
        sa.Column("source", sa.String(20), nullable=False),
        sa.Column("part", sa.String(200)),
        sa.Column("name", sa.String(500)),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_ref", sa.Text),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("image_threshold", sa.Float, nullable=False),
        sa.Column("is_defective", sa.Boolean, nullable=False),
        sa.Column("defect_px", sa.BigInteger, nullable=False),
        sa.Column("defect_fraction", sa.Float, nullable=False),
        sa.Column("pixel_threshold", sa.Float, nullable=False),
        sa.Column("map_ref", sa.Text),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("threshold_id", ROW_ID, sa.ForeignKey("thresholds.id"), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
    )
    op.create_index("ix_inspections_part_captured", "inspections", ["part", "captured_at"])
    op.create_index("ix_inspections_recorded", "inspections", ["recorded_at"])
    op.create_index("ix_inspections_model", "inspections", ["model_id"])
    op.create_table(
        "events",
        sa.Column("id", ROW_ID, primary_key=True, autoincrement=True),
        sa.Column("at", UTC_TIME, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id")),
        sa.Column("by", sa.String(200)),
        sa.Column("old", sa.JSON),
        sa.Column("new", sa.JSON),
    )
    op.create_index("ix_events_at", "events", ["at"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("inspections")
    op.drop_table("thresholds")
    op.drop_table("models")
