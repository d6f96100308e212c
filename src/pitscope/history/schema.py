"""The inspection history's tables (SQLAlchemy Core), as of the newest migration.

models       one row per network + fitted scorers (id: `model_id`, the SHA-256 of their tensors;
             thresholds are not part of it, so a threshold change keeps the model's id).
thresholds   versioned image and pixel thresholds per model: who set them, how, when.
inspections  one row per scored photo: when recorded (UTC) and captured, where from, which part,
             the photo's SHA-256 and optional stored copy, size, score, decision, predicted area,
             the threshold version used, the model, the time it took.
events       threshold changes and model loads.
alerts       wear alerts raised on a part by a rule, with the inspection that raised them, when
             the condition cleared and who acknowledged them.

The migrations under `migrations/versions` build exactly these tables; a test compares them.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite makes only INTEGER PRIMARY KEY an alias of its row id (auto-incrementing); BIGINT elsewhere.
ROW_ID = BigInteger().with_variant(Integer(), "sqlite")
UTC_TIME = DateTime(timezone=True)

models = Table(
    "models",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("pitscope_version", String(40), nullable=False),
    Column("training", JSON),
    Column("first_seen", UTC_TIME, nullable=False),
)

thresholds = Table(
    "thresholds",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("model_id", String(64), ForeignKey("models.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("image_threshold", Float, nullable=False),
    Column("pixel_threshold", Float, nullable=False),
    Column("set_by", String(200), nullable=False),
    Column("how", String(200), nullable=False),
    Column("set_at", UTC_TIME, nullable=False),
    UniqueConstraint("model_id", "version", name="uq_thresholds_model_version"),
)

inspections = Table(
    "inspections",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("recorded_at", UTC_TIME, nullable=False),
    Column("captured_at", UTC_TIME),
    Column("source", String(20), nullable=False),
    Column("part", String(200)),
    Column("name", String(500)),
    Column("image_sha256", String(64), nullable=False),
    Column("image_ref", Text),
    Column("width", Integer, nullable=False),
    Column("height", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("image_threshold", Float, nullable=False),
    Column("is_defective", Boolean, nullable=False),
    Column("defect_px", BigInteger, nullable=False),
    Column("defect_fraction", Float, nullable=False),
    Column("pixel_threshold", Float, nullable=False),
    Column("map_ref", Text),
    Column("model_id", String(64), ForeignKey("models.id"), nullable=False),
    Column("threshold_id", ROW_ID, ForeignKey("thresholds.id"), nullable=False),
    Column("duration_ms", Float, nullable=False),
    Index("ix_inspections_part_captured", "part", "captured_at"),
    Index("ix_inspections_recorded", "recorded_at"),
    Index("ix_inspections_model", "model_id"),
)

events = Table(
    "events",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("at", UTC_TIME, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("model_id", String(64), ForeignKey("models.id")),
    Column("by", String(200)),
    Column("old", JSON),
    Column("new", JSON),
    Index("ix_events_at", "at"),
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", ROW_ID, primary_key=True, autoincrement=True),
    Column("part", String(200), nullable=False),
    Column("rule", String(40), nullable=False),
    Column("values", JSON, nullable=False),
    Column("raised_at", UTC_TIME, nullable=False),
    Column("inspection_id", ROW_ID, ForeignKey("inspections.id", ondelete="SET NULL")),
    Column("cleared_at", UTC_TIME),
    Column("acknowledged_at", UTC_TIME),
    Column("acknowledged_by", String(200)),
    Index("ix_alerts_part_rule", "part", "rule"),
)
