"""The Alembic migrations on SQLite and PostgreSQL: upgrading old data, matching `schema`, going back."""

import datetime as dt

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from pitscope.growth import AlertRule
from pitscope.history import schema
from pitscope.history.store import HistoryError, HistoryStore, _alembic_config, _head_revision, database_url

UTC = dt.UTC
AT = dt.datetime(2023, 6, 1, 8, 30, tzinfo=UTC)
MODEL = "a1" * 32


def _migrate(url: str, direction: str, revision: str) -> None:
    """`alembic upgrade|downgrade revision` on the database at `url`, in one transaction."""
    engine = sa.create_engine(database_url(url))
    try:
        with engine.begin() as connection:
            getattr(command, direction)(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def _state(url: str) -> tuple[str | None, set[str]]:
    """(revision, tables) of the database at `url`."""
    engine = sa.create_engine(database_url(url))
    try:
        with engine.connect() as connection:
            return (
                MigrationContext.configure(connection).get_current_revision(),
                set(sa.inspect(connection).get_table_names()),
            )
    finally:
        engine.dispose()


def _first_schema_with_one_inspection(url: str) -> None:
    """A database at revision 0001 holding one model, its threshold and one inspection."""
    _migrate(url, "upgrade", "0001")
    engine = sa.create_engine(database_url(url))
    try:
        with engine.begin() as connection:
            connection.execute(
                schema.models.insert().values(
                    id=MODEL, name="old", pitscope_version="0.0.9", training={"epochs": 1}, first_seen=AT
                )
            )
            threshold = connection.execute(
                schema.thresholds.insert().values(
                    model_id=MODEL,
                    version=1,
                    image_threshold=1.5,
                    pixel_threshold=0.25,
                    set_by="ops",
                    how="model file",
                    set_at=AT,
                )
            ).inserted_primary_key[0]
            connection.execute(
                schema.inspections.insert().values(
                    recorded_at=AT,
                    captured_at=AT - dt.timedelta(hours=1),
                    source="cli",
                    part="p",
                    name="a.jpg",
                    image_sha256="cd" * 32,
                    width=10,
                    height=20,
                    score=2.5,
                    image_threshold=1.5,
                    is_defective=True,
                    defect_px=4,
                    defect_fraction=0.02,
                    pixel_threshold=0.25,
                    model_id=MODEL,
                    threshold_id=threshold,
                    duration_ms=5.0,
                )
            )
    finally:
        engine.dispose()
    assert _state(url) == ("0001", {"alembic_version", "models", "thresholds", "inspections", "events"})


def test_a_first_schema_database_is_upgraded_on_opening_and_keeps_its_rows(history_url):
    _first_schema_with_one_inspection(history_url)
    store = HistoryStore(history_url)
    try:
        assert store.revision() == _head_revision()[0]
        (row,) = store.inspections()
        assert (row["part"], row["score"], row["defect_px"], row["threshold_version"]) == ("p", 2.5, 4, 1)
        assert row["recorded_at"] == AT and row["captured_at"] == AT - dt.timedelta(hours=1)
        (threshold,) = store.thresholds(MODEL)
        assert (threshold.version, threshold.image_threshold, threshold.set_at) == (1, 1.5, AT)
        assert store.model(MODEL)["training"] == {"epochs": 1}
        # the alerts of 0002 work on the upgraded database, next to the old row
        inspection, raised = store.record_inspection(
            model=MODEL,
            threshold=threshold,
            source="cli",
            image_sha256="ef" * 32,
            width=10,
            height=10,
            score=3.0,
            image_threshold=1.5,
            is_defective=True,
            defect_px=50,
            pixel_threshold=0.25,
            duration_ms=1.0,
            part="p",
            rule=AlertRule(area_fraction_above=0.1, growth_per_day_above=None),
        )
        assert inspection != row["id"] and [a["rule"] for a in raised] == ["area"]
        assert [a["inspection_id"] for a in store.alerts(part="p")] == [inspection]
    finally:
        store.close()


def test_an_old_database_is_refused_when_upgrading_is_off(history_url):
    _first_schema_with_one_inspection(history_url)
    with pytest.raises(HistoryError, match="older"):
        HistoryStore(history_url, upgrade=False)
    assert _state(history_url)[0] == "0001"


def test_the_head_migration_builds_exactly_the_schema_module(history_url):
    HistoryStore(history_url).close()
    engine = sa.create_engine(database_url(history_url))
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, schema.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_back(history_url):
    store = HistoryStore(history_url)
    store.register_model({}, "empty", 1.0, 0.5)
    store.close()
    tables = set(schema.metadata.tables) | {"alembic_version"}
    _migrate(history_url, "downgrade", "0001")
    assert _state(history_url) == ("0001", tables - {"alerts"})
    _migrate(history_url, "downgrade", "base")
    assert _state(history_url) == (None, {"alembic_version"})
    _migrate(history_url, "upgrade", "head")
    assert _state(history_url) == (_head_revision()[0], tables)
    store = HistoryStore(history_url)
    try:
        assert store.events() == []  # the downgrade dropped the data with the tables
        mid, threshold = store.register_model({}, "empty", 1.0, 0.5)
        assert threshold.version == 1 and store.model(mid)["name"] == "empty"
    finally:
        store.close()
