"""HistoryStore on SQLite and PostgreSQL (`history_url` runs every store test on both)."""

import datetime as dt
import hashlib

import numpy as np
import pytest
import sqlalchemy as sa
import torch

from pitscope.growth import AlertRule, trailing_growth
from pitscope.history import schema
from pitscope.history import store as store_module
from pitscope.history.store import HistoryStore, HistoryUnavailable, ThresholdVersion, model_id

UTC = dt.UTC
T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AREA = AlertRule(area_fraction_above=0.01, growth_per_day_above=None)


def _state(w: float = 1.0, **extra) -> dict:
    """A tiny fake detector state dict: one weight tensor and the two threshold buffers."""
    return {"w": torch.full((3,), w), "threshold": torch.tensor(1.0), "pixel_threshold": torch.tensor(0.5), **extra}


def _record(store: HistoryStore, mid: str, tv: ThresholdVersion, **overrides) -> tuple[int, list[dict]]:
    """record_inspection with plain defaults (a 100 x 100 good photo from the CLI), overridden by keyword."""
    values = dict(
        model=mid,
        threshold=tv,
        source="cli",
        image_sha256="ab" * 32,
        width=100,
        height=100,
        score=0.25,
        image_threshold=tv.image_threshold,
        is_defective=False,
        defect_px=0,
        pixel_threshold=tv.pixel_threshold,
        duration_ms=12.5,
    )
    return store.record_inspection(**{**values, **overrides})


def _ids(rows: list[dict]) -> list[int]:
    return [row["id"] for row in rows]


class _Clock:
    """A settable stand-in for `pitscope.history.store.now`."""

    def __init__(self, at: dt.datetime):
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    clock = _Clock(T0)
    monkeypatch.setattr(store_module, "now", clock)
    return clock


@pytest.fixture
def store(history_url):
    store = HistoryStore(history_url)
    yield store
    store.close()


@pytest.fixture
def model(store) -> tuple[str, ThresholdVersion]:
    return store.register_model(_state(), "tiny", 1.0, 0.5)


# -- opening ---------------------------------------------------------------------------------


def test_a_fresh_database_is_brought_to_the_head_revision(history_url):
    head, _ = store_module._head_revision()
    store = HistoryStore(history_url)
    try:
        assert store.revision() == head
        with store.engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) == set(schema.metadata.tables) | {"alembic_version"}
        mid, _ = store.register_model(_state(), "tiny", 1.0, 0.5)
    finally:
        store.close()
    again = HistoryStore(history_url)  # at head already: opens without touching the data
    try:
        assert again.revision() == head and again.model(mid)["name"] == "tiny"
    finally:
        again.close()


# -- models and thresholds -------------------------------------------------------------------


def test_model_id_ignores_the_threshold_buffers_only():
    base = model_id(_state())
    assert len(base) == 64 and int(base, 16) >= 0
    assert model_id({"threshold": torch.tensor(9.0), "pixel_threshold": torch.tensor(0.1), "w": torch.ones(3)}) == base
    assert model_id({"w": torch.ones(6)[::2]}) == base  # a strided view hashes as its values
    changed = {
        "value": _state(w=1.0001),
        "dtype": {**_state(), "w": torch.ones(3, dtype=torch.float64)},
        "shape": {**_state(), "w": torch.ones(1, 3)},
        "key": {"v": torch.ones(3)},
        "extra tensor": _state(b=torch.zeros(0)),
    }
    ids = {what: model_id(state) for what, state in changed.items()}
    assert base not in ids.values(), ids
    assert len(set(ids.values())) == len(ids)


def test_register_model_is_idempotent_per_model_id(store, clock):
    mid, tv = store.register_model(_state(), "tiny", 1.0, 0.5, training={"epochs": 3, "loss": float("nan")})
    assert mid == model_id(_state())
    assert tv == ThresholdVersion(tv.id, mid, 1, 1.0, 0.5, "pitscope", "model file", T0)
    clock.at = T0 + dt.timedelta(hours=1)
    assert store.register_model(_state(), "renamed", 1.0, 0.5) == (mid, tv)
    assert store.model(mid) == {
        "id": mid,
        "name": "tiny",
        "pitscope_version": store_module.__version__,
        "training": {"epochs": 3, "loss": None},
        "first_seen": T0,
    }
    assert store.thresholds(mid) == [tv]
    assert [e["kind"] for e in store.events()] == ["model_load", "model_load"]


def test_register_model_adds_a_threshold_version_only_when_the_thresholds_differ(store):
    mid, v1 = store.register_model(_state(), "tiny", 1.0, 0.5)
    _, v2 = store.register_model(_state(), "tiny", 2.0, 0.5, by="ops", how="recalibrated")
    _, same = store.register_model(_state(), "tiny", 2.0, 0.5)
    _, v3 = store.register_model(_state(), "tiny", 2.0, 0.25)
    assert (v2.version, v2.image_threshold, v2.set_by, v2.how) == (2, 2.0, "ops", "recalibrated")
    assert same == v2 and v3.version == 3 and v3.pixel_threshold == 0.25
    assert store.thresholds(mid) == [v1, v2, v3] and store.current_threshold(mid) == v3
    other, other_tv = store.register_model(_state(w=2.0), "tiny", 2.0, 0.25)
    assert other != mid and other_tv.version == 1
    assert [e["kind"] for e in store.events()].count("threshold_change") == 2


def test_set_threshold_adds_the_next_version_and_an_event(store, model, clock):
    mid, v1 = model
    clock.at = T0 + dt.timedelta(days=1)
    v2 = store.set_threshold(mid, 1.5, 0.75, by="alice", how="calibrate --write")
    assert v2 == ThresholdVersion(v2.id, mid, 2, 1.5, 0.75, "alice", "calibrate --write", clock.at)
    assert store.current_threshold(mid) == v2 and store.thresholds(mid) == [v1, v2]
    event = store.events()[0]
    assert (event["kind"], event["model_id"], event["by"], event["at"]) == ("threshold_change", mid, "alice", clock.at)
    assert event["old"] == {"version": 1, "image_threshold": 1.0, "pixel_threshold": 0.5}
    assert event["new"] == {"version": 2, "image_threshold": 1.5, "pixel_threshold": 0.75, "how": "calibrate --write"}
    assert store.set_threshold(mid, 1.0, 0.5, by="bob", how="revert").version == 3


def test_set_threshold_of_an_unknown_model_records_nothing(store):
    with pytest.raises(HistoryUnavailable, match="register it first"):
        store.set_threshold("0" * 64, 1.0, 0.5, by="alice", how="manual")
    assert store.current_threshold("0" * 64) is None and store.events() == []


# -- inspections -----------------------------------------------------------------------------


def test_record_inspection_round_trips_every_column(store, model, clock):
    mid, tv = model
    captured = dt.datetime(2020, 8, 28, 13, 0, 14, 250_000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    inspection, alerts = _record(
        store,
        mid,
        tv,
        source="http",
        part="277500_315",
        name="01_x.jpg",
        image_sha256="cd" * 32,
        image_ref="ab/abcd.png",
        map_ref="cd/cdef.png",
        width=40,
        height=25,
        score=3.75,
        image_threshold=1.0,
        is_defective=True,
        defect_px=37,
        pixel_threshold=0.5,
        duration_ms=81.25,
        captured_at=captured,
    )
    assert alerts == []
    (row,) = store.inspections()
    assert row == {
        "id": inspection,
        "recorded_at": T0,
        "captured_at": dt.datetime(2020, 8, 28, 11, 0, 14, 250_000, tzinfo=UTC),
        "source": "http",
        "part": "277500_315",
        "name": "01_x.jpg",
        "image_sha256": "cd" * 32,
        "image_ref": "ab/abcd.png",
        "width": 40,
        "height": 25,
        "score": 3.75,
        "image_threshold": 1.0,
        "is_defective": True,
        "defect_px": 37,
        "defect_fraction": 37 / (40 * 25),
        "pixel_threshold": 0.5,
        "map_ref": "cd/cdef.png",
        "model_id": mid,
        "threshold_id": tv.id,
        "duration_ms": 81.25,
        "threshold_version": 1,
    }
    assert set(row) == set(schema.inspections.c.keys()) | {"threshold_version"}
    assert row["recorded_at"].utcoffset() == dt.timedelta(0) and row["captured_at"].utcoffset() == dt.timedelta(0)


def test_record_inspection_takes_a_naive_capture_time_as_utc_and_leaves_unknowns_empty(store, model):
    mid, tv = model
    before = dt.datetime.now(UTC)
    _record(store, mid, tv, captured_at=dt.datetime(2021, 1, 2, 3, 4, 5))
    _record(store, mid, tv)
    newest, oldest = store.inspections()
    assert oldest["captured_at"] == dt.datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert newest["captured_at"] is None and newest["part"] is None and newest["image_ref"] is None
    assert before - dt.timedelta(seconds=1) <= newest["recorded_at"] <= dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    assert newest["is_defective"] is False and newest["defect_fraction"] == 0.0


@pytest.mark.parametrize(
    "overrides, message", [({"source": "ftp"}, "source"), ({"width": 0}, "positive"), ({"height": -1}, "positive")]
)
def test_record_inspection_refuses_bad_values_and_records_nothing(store, model, overrides, message):
    with pytest.raises(ValueError, match=message):
        _record(store, *model, **overrides)
    assert store.count() == 0


@pytest.fixture
def four_inspections(store, model, clock) -> dict:
    """a, b: part p1 with capture times, model A; c: part p2, no capture time (recorded 2024-01-02),
    model B; d: no part, model B."""
    mid_a, tv_a = model
    mid_b, tv_b = store.register_model(_state(w=3.0), "other", 1.0, 0.5)

    def day(n):
        return dt.datetime(2024, 1, n, tzinfo=UTC)

    ids = {}
    ids["a"], _ = _record(store, mid_a, tv_a, part="p1", captured_at=day(1), source="cli", is_defective=False)
    ids["b"], _ = _record(store, mid_a, tv_a, part="p1", captured_at=day(3), source="http", is_defective=True)
    clock.at = day(2)
    ids["c"], _ = _record(store, mid_b, tv_b, part="p2", source="page", is_defective=True)
    clock.at = T0
    ids["d"], _ = _record(store, mid_b, tv_b, captured_at=day(5), source="cli", is_defective=False)
    return {"ids": ids, "a": mid_a, "b": mid_b}


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({}, "dcba"),
        ({"part": "p1"}, "ba"),
        ({"part": "p3"}, ""),
        ({"since": dt.datetime(2024, 1, 2, tzinfo=UTC)}, "dcb"),  # c: its recorded time, and since is inclusive
        ({"since": dt.datetime(2024, 1, 2, 2, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))}, "dcb"),
        ({"since": dt.datetime(2024, 1, 2, 0, 0, 1, tzinfo=UTC)}, "db"),
        ({"until": dt.datetime(2024, 1, 3, tzinfo=UTC)}, "ca"),  # until is exclusive
        ({"since": dt.datetime(2024, 1, 1, 12, tzinfo=UTC), "until": dt.datetime(2024, 1, 4, tzinfo=UTC)}, "cb"),
        ({"decision": "defective"}, "cb"),
        ({"decision": "good"}, "da"),
        ({"source": "http"}, "b"),
        ({"source": "cli"}, "da"),
        ({"part": "p1", "decision": "good"}, "a"),
    ],
)
def test_inspections_and_count_filter(store, four_inspections, filters, expected):
    wanted = [four_inspections["ids"][name] for name in expected]
    assert _ids(store.inspections(**filters)) == wanted
    assert store.count(**filters) == len(wanted)


def test_inspections_filter_by_model_id_prefix(store, four_inspections):
    ids, mid_b = four_inspections["ids"], four_inspections["b"]
    assert four_inspections["a"][:10] != mid_b[:10]
    assert _ids(store.inspections(model=mid_b[:10])) == [ids["d"], ids["c"]]
    assert _ids(store.inspections(model=mid_b)) == [ids["d"], ids["c"]] and store.count(model=mid_b[:10]) == 2
    assert store.inspections(model="zz") == [] and store.count(model="zz") == 0


def test_an_unknown_decision_is_refused(store):
    with pytest.raises(ValueError, match="decision"):
        store.inspections(decision="maybe")


def test_inspections_page_newest_recorded_first(store, model):
    mid, tv = model
    # captured in the opposite order to recording: the order is by recording, not capture
    ids = [_record(store, mid, tv, captured_at=T0 - dt.timedelta(days=k))[0] for k in range(5)]
    newest = ids[::-1]
    assert _ids(store.inspections(limit=2)) == newest[:2]
    assert _ids(store.inspections(limit=2, offset=2)) == newest[2:4]
    assert _ids(store.inspections(limit=2, offset=4)) == newest[4:]
    assert _ids(store.inspections(limit=None)) == newest
    assert _ids(store.inspections(limit=3, newest_first=False)) == ids[:3]
    assert store.inspections(offset=5) == [] and store.count() == 5


def test_inspections_report_the_threshold_version_they_were_scored_with(store, model):
    mid, v1 = model
    _record(store, mid, v1)
    v2 = store.set_threshold(mid, 2.0, 0.5, by="ops", how="manual")
    _record(store, mid, v2, image_threshold=2.0)
    _record(store, mid, v1)  # a request still in flight with the old version
    rows = store.inspections()
    assert [r["threshold_version"] for r in rows] == [1, 2, 1]
    assert [r["threshold_id"] for r in rows] == [v1.id, v2.id, v1.id]


def test_trend_is_in_capture_order_whatever_the_recording_order(store, model, clock):
    mid, tv = model

    def at(days):
        return T0 - dt.timedelta(days=days)

    third, _ = _record(store, mid, tv, part="p", captured_at=at(1), defect_px=30)
    first, _ = _record(store, mid, tv, part="p", captured_at=at(3), defect_px=10)
    tie, _ = _record(store, mid, tv, part="p", captured_at=at(1), defect_px=31)  # same time: by id
    second, _ = _record(store, mid, tv, part="p", captured_at=at(2), defect_px=20)
    clock.at = at(0.5)
    last, _ = _record(store, mid, tv, part="p", name="no capture time", defect_px=40)
    _record(store, mid, tv, part="q", captured_at=at(2.5))
    _record(store, mid, tv, captured_at=at(2.5))
    rows = store.trend("p")
    assert _ids(rows) == [first, second, third, tie, last]
    assert [r["time"] for r in rows] == [at(3), at(2), at(1), at(1), at(0.5)]
    assert all(r["time"].tzinfo is not None and r["time"].utcoffset() == dt.timedelta(0) for r in rows)
    assert rows[-1]["captured_at"] is None and rows[-1]["name"] == "no capture time"
    assert [r["defect_fraction"] for r in rows] == [0.001, 0.002, 0.003, 0.0031, 0.004]
    assert {
        "id",
        "time",
        "captured_at",
        "name",
        "score",
        "image_threshold",
        "is_defective",
        "defect_px",
        "defect_fraction",
        "model_id",
    } <= set(rows[0])
    assert _ids(store.trend("p", since=at(2), until=at(0.5))) == [second, third, tie]
    assert store.trend("nothing") == []


def test_parts_count_inspections_last_time_and_open_alerts(store, model, clock):
    mid, tv = model
    _record(store, mid, tv, part="p1", captured_at=T0 - dt.timedelta(days=2))
    _record(store, mid, tv, part="p1", captured_at=T0 - dt.timedelta(days=4))
    clock.at = T0 - dt.timedelta(hours=1)
    _, raised = _record(store, mid, tv, part="p2", defect_px=5000, rule=AREA)
    _record(store, mid, tv, captured_at=T0)  # no part: not listed
    assert len(raised) == 1
    assert store.parts() == [
        {"part": "p1", "inspections": 2, "last": T0 - dt.timedelta(days=2), "open_alerts": 0},
        {"part": "p2", "inspections": 1, "last": T0 - dt.timedelta(hours=1), "open_alerts": 1},
    ]
    store.acknowledge(raised[0]["id"], by="alice")
    assert [p["open_alerts"] for p in store.parts()] == [0, 0]


# -- alerts ----------------------------------------------------------------------------------


def test_the_area_rule_raises_once_clears_and_raises_again(store, model, clock):
    mid, tv = model

    def record(px):
        return _record(store, mid, tv, part="p", defect_px=px, rule=AREA)

    first, raised = record(200)  # 2 % > 1 %
    assert raised == [
        {
            "id": raised[0]["id"],
            "part": "p",
            "rule": "area",
            "inspection_id": first,
            "raised_at": T0.isoformat(timespec="seconds"),
            "values": {"defect_fraction": 0.02, "limit": 0.01, "rule": AREA.describe()},
        }
    ]
    assert record(300)[1] == []  # still open: no second alert
    assert record(100)[1] == []  # exactly at the limit: not above, so it clears
    (alert,) = store.alerts(part="p")
    assert alert["cleared_at"] == T0 and alert["acknowledged_at"] is None and alert["inspection_id"] == first
    again, raised = record(101)
    assert len(raised) == 1 and raised[0]["inspection_id"] == again and raised[0]["id"] != alert["id"]
    assert _ids(store.alerts(part="p")) == [raised[0]["id"], alert["id"]]
    assert record(5000)[1] == [] and store.alerts(part="other") == []


def test_no_alert_without_a_rule_or_a_part(store, model):
    mid, tv = model
    _record(store, mid, tv, part="p", defect_px=9000)
    _record(store, mid, tv, defect_px=9000, rule=AREA)
    assert store.alerts() == []


def test_acknowledging_an_alert_ends_its_suppression(store, model, clock):
    mid, tv = model
    _, (alert,) = _record(store, mid, tv, part="p", defect_px=500, rule=AREA)
    clock.at = T0 + dt.timedelta(minutes=5)
    acknowledged = store.acknowledge(alert["id"], by="alice")
    assert (acknowledged["id"], acknowledged["acknowledged_by"], acknowledged["acknowledged_at"]) == (
        alert["id"],
        "alice",
        clock.at,
    )
    assert acknowledged["cleared_at"] is None and acknowledged["values"] == alert["values"]
    assert store.alerts(unacknowledged=True) == []
    _, raised = _record(store, mid, tv, part="p", defect_px=500, rule=AREA)
    assert len(raised) == 1 and _ids(store.alerts(unacknowledged=True)) == [raised[0]["id"]]


def test_acknowledge_is_idempotent_and_unknown_ids_give_none(store, model, clock):
    mid, tv = model
    _, (alert,) = _record(store, mid, tv, part="p", defect_px=500, rule=AREA)
    first = store.acknowledge(alert["id"], by="alice")
    clock.at = T0 + dt.timedelta(hours=1)
    assert store.acknowledge(alert["id"], by="bob") == first
    assert first["acknowledged_by"] == "alice" and first["acknowledged_at"] == T0
    assert store.acknowledge(alert["id"] + 1000, by="bob") is None


# A part's predicted area (pixels of a 100 x 100 photo) over days: flat, a fast rise, flat, a fall, a rise.
DAYS = [0.0, 0.25, 0.5, 1.0, 1.5, 1.75, 2.0, 2.5, 3.0, 3.25, 3.5, 4.5, 5.0, 5.1]
PIXELS = [10, 12, 11, 12, 40, 70, 95, 96, 94, 60, 30, 31, 60, 90]
GROWTH = AlertRule(area_fraction_above=None, growth_per_day_above=0.001, window_days=1.0)
BOTH = AlertRule(area_fraction_above=0.008, growth_per_day_above=0.001, window_days=1.0)
CONFIRMED = AlertRule(area_fraction_above=0.008, growth_per_day_above=0.001, window_days=1.0, confirm_images=2)
SMOOTHED = AlertRule(area_fraction_above=0.008, growth_per_day_above=0.001, window_days=1.0, smooth_images=3)
SMOOTHED_CONFIRMED = AlertRule(0.008, 0.001, window_days=1.0, confirm_images=2, smooth_images=3)


def _series(store, mid, tv, rule) -> list[list[dict]]:
    """Record DAYS and PIXELS as inspections of part "p" under `rule`; the alerts each one raised."""
    return [
        _record(store, mid, tv, part="p", defect_px=px, captured_at=T0 + dt.timedelta(days=day), rule=rule)[1]
        for day, px in zip(DAYS, PIXELS)
    ]


def test_the_series_is_far_from_the_limits():
    fractions = np.array(PIXELS) / 10_000
    growth = trailing_growth(DAYS, fractions, 1.0)
    margin = np.abs(growth[~np.isnan(growth)] - GROWTH.growth_per_day_above)
    assert margin.min() > 1e-5 and np.abs(fractions - BOTH.area_fraction_above).min() > 1e-5
    assert 0 < GROWTH.fires(DAYS, fractions).sum() < len(DAYS)  # a series that tells the rules apart
    assert 0 < CONFIRMED.fires(DAYS, fractions).sum() < BOTH.fires(DAYS, fractions).sum()
    watched = SMOOTHED.watched(fractions)
    growth = trailing_growth(DAYS, watched, 1.0)
    margin = np.abs(growth[~np.isnan(growth)] - SMOOTHED.growth_per_day_above)
    assert margin.min() > 1e-5 and np.abs(watched - SMOOTHED.area_fraction_above).min() > 1e-5
    # the median changes where the rule fires, and confirmation changes it again
    assert SMOOTHED.fires(DAYS, fractions).tolist() != BOTH.fires(DAYS, fractions).tolist()
    assert 0 < SMOOTHED_CONFIRMED.fires(DAYS, fractions).sum() < SMOOTHED.fires(DAYS, fractions).sum()


@pytest.mark.parametrize(
    "rule",
    [GROWTH, BOTH, CONFIRMED, SMOOTHED, SMOOTHED_CONFIRMED],
    ids=["growth", "area and growth", "two in a row", "median of three", "median of three, two in a row"],
)
def test_the_live_rule_holds_exactly_where_alert_rule_fires_offline(store, model, rule):
    """Acknowledging each alert as it is raised lifts suppression, so an alert is raised at
    every inspection where a condition holds: compare each condition with the offline rule."""
    mid, tv = model
    fractions = np.array(PIXELS) / 10_000
    expected = {}
    if rule.area_fraction_above is not None:
        area_alone = AlertRule(rule.area_fraction_above, None, 1.0, rule.confirm_images, rule.smooth_images)
        expected["area"] = area_alone.fires(DAYS, fractions)
    growth_alone = AlertRule(None, rule.growth_per_day_above, rule.window_days, rule.confirm_images, rule.smooth_images)
    expected["growth"] = growth_alone.fires(DAYS, fractions)
    live = {name: [] for name in expected}
    growth = trailing_growth(DAYS, rule.watched(fractions), rule.window_days)
    for k, (day, px) in enumerate(zip(DAYS, PIXELS)):
        _, raised = _record(store, mid, tv, part="p", defect_px=px, captured_at=T0 + dt.timedelta(days=day), rule=rule)
        names = [alert["rule"] for alert in raised]
        for name, held in live.items():
            held.append(name in names)
        for alert in raised:
            if alert["rule"] == "growth":
                assert alert["values"]["growth_per_day"] == pytest.approx(growth[k], rel=1e-9, abs=1e-12)
            if alert["rule"] == "area" and rule.smooth_images > 1:
                assert alert["values"]["watched_fraction"] == pytest.approx(rule.watched(fractions)[k])
            store.acknowledge(alert["id"], by="test")
    for name, fires in expected.items():
        assert live[name] == fires.tolist(), name
    assert np.logical_or.reduce([live[n] for n in live]).tolist() == rule.fires(DAYS, fractions).tolist()


def test_the_trend_carries_the_watched_area_from_the_whole_history(store, model):
    """With smooth k > 1 each trend point carries the median the rule watches, reaching back
    before `since` for the first points' k - 1 predecessors."""
    mid, tv = model
    _series(store, mid, tv, SMOOTHED)
    watched = SMOOTHED.watched(np.array(PIXELS) / 10_000)
    whole = store.trend("p", smooth=3)
    assert [p["watched_fraction"] for p in whole] == pytest.approx(watched.tolist())
    since = T0 + dt.timedelta(days=DAYS[5])
    later = store.trend("p", since=since, smooth=3)
    assert [p["id"] for p in later] == [p["id"] for p in whole[5:]]
    assert [p["watched_fraction"] for p in later] == pytest.approx(watched[5:].tolist())
    assert "watched_fraction" not in store.trend("p")[0]  # the predicted area alone without a median


def test_unacknowledged_growth_alerts_are_raised_where_the_condition_starts(store, model):
    mid, tv = model
    holds = GROWTH.fires(DAYS, np.array(PIXELS) / 10_000)
    starts = holds & ~np.concatenate([[False], holds[:-1]])
    assert holds.sum() > starts.sum() > 1  # several spells, some longer than one inspection
    raised = [bool(r) for r in _series(store, mid, tv, GROWTH)]
    assert raised == starts.tolist()
    newest, *older = store.alerts()
    assert all(a["cleared_at"] is not None for a in older) and (newest["cleared_at"] is None) == holds[-1]


# -- pruning and copies ----------------------------------------------------------------------


def test_prune_deletes_old_inspections_their_alert_links_and_unreferenced_copies(history_url, tmp_path, clock):
    store = HistoryStore(history_url, image_store="copy", copies_dir=tmp_path / "copies")
    try:
        mid, tv = store.register_model(_state(), "tiny", 1.0, 0.5)
        only_old, shared, old_map, recent_map = (store.store_image(bytes([n]) * 10) for n in range(4))
        clock.at = T0 - dt.timedelta(days=40)
        old1, (old_alert,) = _record(
            store, mid, tv, part="p", defect_px=5000, rule=AREA, image_ref=only_old, map_ref=old_map
        )
        old2, _ = _record(store, mid, tv, image_ref=shared)
        clock.at = T0 - dt.timedelta(days=10)
        _, (recent_alert,) = _record(
            store,
            mid,
            tv,
            part="q",
            defect_px=5000,
            rule=AREA,
            image_ref=shared,
            map_ref=recent_map,
            captured_at=T0 - dt.timedelta(days=90),
        )
        recent = store.inspections()[0]["id"]
        clock.at = T0
        result = store.prune(30)
        assert result == {"inspections": 2, "copies": 2, "cutoff": (T0 - dt.timedelta(days=30)).isoformat()}
        assert _ids(store.inspections()) == [recent]  # by recorded time, not the older capture time
        alerts = {a["id"]: a for a in store.alerts()}
        assert alerts[old_alert["id"]]["inspection_id"] is None
        assert alerts[recent_alert["id"]]["inspection_id"] == recent
        kept = {ref: (tmp_path / "copies" / ref).is_file() for ref in (only_old, shared, old_map, recent_map)}
        assert kept == {only_old: False, shared: True, old_map: False, recent_map: True}
        assert store.prune(30) == {"inspections": 0, "copies": 0, "cutoff": result["cutoff"]}
        assert old1 != old2
    finally:
        store.close()


@pytest.mark.parametrize("days", [-1, float("nan")])
def test_prune_refuses_a_negative_or_missing_age(store, days):
    with pytest.raises(ValueError, match="older_than_days"):
        store.prune(days)


def test_prune_in_copy_mode_never_deletes_photos_recorded_by_path(history_url, tmp_path, clock):
    photo = tmp_path / "photos" / "part.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"original photo")
    by_path = HistoryStore(history_url, image_store="path")
    mid, tv = by_path.register_model(_state(), "tiny", 1.0, 0.5)
    clock.at = T0 - dt.timedelta(days=40)
    _record(by_path, mid, tv, image_ref=str(photo))
    by_path.close()
    clock.at = T0
    by_copy = HistoryStore(history_url, image_store="copy", copies_dir=tmp_path / "copies")
    try:
        assert by_copy.prune(30)["inspections"] == 1
    finally:
        by_copy.close()
    assert photo.is_file() and photo.read_bytes() == b"original photo"


def test_store_image_names_copies_by_sha256_and_writes_them_once(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite", image_store="copy")
    try:
        data = b"\x89PNG fake image bytes"
        digest = hashlib.sha256(data).hexdigest()
        ref = store.store_image(data, ".PNG")
        assert ref == f"{digest[:2]}/{digest}.png"
        assert store.copies_dir == tmp_path / "h.sqlite.images"
        target = store.copies_dir / ref
        assert target.read_bytes() == data
        target.write_bytes(b"marker")  # a second store of the same bytes must not write again
        assert store.store_image(data, ".png") == ref and target.read_bytes() == b"marker"
        assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no partial files left
        assert store.store_image(b"other", ".jpg").endswith(f"{hashlib.sha256(b'other').hexdigest()}.jpg")
    finally:
        store.close()
    plain = HistoryStore(tmp_path / "plain.sqlite")
    try:
        assert plain.store_image(b"x") is None and plain.copies_dir is None
    finally:
        plain.close()


def test_copies_of_a_database_url_need_a_folder():
    with pytest.raises(ValueError, match="copies_dir"):  # refused before connecting
        HistoryStore("postgresql+psycopg://pitscope@127.0.0.1:1/history", image_store="copy")


def test_an_unknown_image_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="image_store"):
        HistoryStore(tmp_path / "h.sqlite", image_store="cloud")
