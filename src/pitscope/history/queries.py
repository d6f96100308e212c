"""The reading queries of the inspection history: the part of `HistoryStore` that reads.

Inspections by part, time, decision, model and source; a part's trend in capture order; the
parts with their open alerts; alerts, events, models and threshold versions. Times come back
in UTC.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pitscope.growth import trailing_median
from pitscope.history import schema
from pitscope.history.database import HistoryDatabase
from pitscope.history.names import as_utc

DECISIONS = ("defective", "good")


def fractions_before(connection: Connection, part: str, time: dt.datetime, ident: int, n: int) -> list[float]:
    """The predicted area fractions of `part`'s n inspections just before the inspection `ident`
    captured at `time` (in capture order, then id), oldest first; fewer at the part's start."""
    i = schema.inspections
    when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at)
    time = as_utc(time)
    rows = connection.execute(
        sa.select(i.c.defect_fraction)
        .where(i.c.part == part, (when < time) | ((when == time) & (i.c.id < ident)))
        .order_by(when.desc(), i.c.id.desc())
        .limit(n)
    ).all()
    return [f for (f,) in reversed(rows)]


@dataclass(frozen=True)
class ThresholdVersion:
    """One row of `thresholds`."""

    id: int
    model_id: str
    version: int
    image_threshold: float
    pixel_threshold: float
    set_by: str
    how: str
    set_at: dt.datetime


def _row(mapping) -> dict:
    """A result row as a dict with its times in UTC (SQLite gives them back without a zone)."""
    out = dict(mapping)
    for key, value in out.items():
        if isinstance(value, dt.datetime):
            out[key] = as_utc(value)
    return out


class HistoryQueries(HistoryDatabase):
    """The reading queries of a `HistoryStore`."""

    def _filters(self, part=None, since=None, until=None, decision=None, model=None, source=None) -> list:
        i = schema.inspections
        when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at)
        conditions = []
        if part is not None:
            conditions.append(i.c.part == part)
        if since is not None:
            conditions.append(when >= as_utc(since))
        if until is not None:
            conditions.append(when < as_utc(until))
        if decision is not None:
            if decision not in DECISIONS:
                raise ValueError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
            conditions.append(i.c.is_defective == (decision == "defective"))
        if model is not None:
            conditions.append(i.c.model_id.startswith(model))
        if source is not None:
            conditions.append(i.c.source == source)
        return conditions

    def inspections(
        self, *, limit: int | None = 100, offset: int = 0, newest_first: bool = True, **filters
    ) -> list[dict]:
        """Inspections matching the filters (part, since, until, decision, model id prefix, source),
        newest recorded first (or oldest first), as dicts of the table's columns plus
        `threshold_version`."""
        i, t = schema.inspections, schema.thresholds
        query = (
            sa.select(i, t.c.version.label("threshold_version"))
            .join(t, t.c.id == i.c.threshold_id)
            .where(*self._filters(**filters))
            .order_by(i.c.id.desc() if newest_first else i.c.id.asc())
            .offset(offset)
        )
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_row(r._mapping) for r in connection.execute(query)]

    def count(self, **filters) -> int:
        """How many inspections match the filters of `inspections`."""
        query = sa.select(sa.func.count()).select_from(schema.inspections).where(*self._filters(**filters))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def trend(
        self, part: str, since: dt.datetime | None = None, until: dt.datetime | None = None, smooth: int = 1
    ) -> list[dict]:
        """A part's inspections in capture order (capture time, else recorded time; then id):
        dicts of id, time, captured_at, name, width, height, score, image_threshold, is_defective,
        defect_px, defect_fraction, pixel_threshold, model_id; with smooth k > 1 also
        watched_fraction, the median of each inspection's defect_fraction and the part's k - 1
        inspections before it (those before `since` included), as `AlertRule.watched` reads it."""
        i = schema.inspections
        when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at).label("time")
        query = (
            sa.select(
                i.c.id,
                when,
                i.c.captured_at,
                i.c.name,
                i.c.width,
                i.c.height,
                i.c.score,
                i.c.image_threshold,
                i.c.is_defective,
                i.c.defect_px,
                i.c.defect_fraction,
                i.c.pixel_threshold,
                i.c.model_id,
            )
            .where(*self._filters(part=part, since=since, until=until))
            .order_by(when, i.c.id)
        )
        with self.engine.connect() as connection:
            rows = [_row(r._mapping) for r in connection.execute(query)]
            for row in rows:  # SQLite returns coalesce() as text
                if isinstance(row["time"], str):
                    row["time"] = as_utc(dt.datetime.fromisoformat(row["time"]))
            if smooth > 1 and rows:
                pad = fractions_before(connection, part, rows[0]["time"], rows[0]["id"], smooth - 1)
                areas = [*pad, *(r["defect_fraction"] for r in rows)]
                for row, watched in zip(rows, trailing_median(areas, smooth)[len(pad) :]):
                    row["watched_fraction"] = float(watched)
        return rows

    def parts(self) -> list[dict]:
        """Every part with inspections: part, inspections, last time, open alerts."""
        i, a = schema.inspections, schema.alerts
        when = sa.func.max(sa.func.coalesce(i.c.captured_at, i.c.recorded_at))
        query = (
            sa.select(i.c.part, sa.func.count().label("inspections"), when.label("last"))
            .where(i.c.part.is_not(None))
            .group_by(i.c.part)
            .order_by(i.c.part)
        )
        open_alerts = (
            sa.select(a.c.part, sa.func.count().label("n")).where(a.c.acknowledged_at.is_(None)).group_by(a.c.part)
        )
        with self.engine.connect() as connection:
            rows = [dict(r._mapping) for r in connection.execute(query)]
            alerts: dict[str, int] = dict(connection.execute(open_alerts).all())
        for row in rows:
            if isinstance(row["last"], str):
                row["last"] = dt.datetime.fromisoformat(row["last"])
            row["last"] = as_utc(row["last"]) if row["last"] is not None else None
            row["open_alerts"] = int(alerts.get(row["part"], 0))
        return rows

    def alerts(self, part: str | None = None, unacknowledged: bool = False, limit: int = 200) -> list[dict]:
        """Alerts, newest first: of one part, or all; only those not acknowledged yet."""
        a = schema.alerts
        query = sa.select(a).order_by(a.c.id.desc()).limit(limit)
        if part is not None:
            query = query.where(a.c.part == part)
        if unacknowledged:
            query = query.where(a.c.acknowledged_at.is_(None))
        with self.engine.connect() as connection:
            return [_row(r._mapping) for r in connection.execute(query)]

    def events(self, limit: int = 200) -> list[dict]:
        """Threshold changes and model loads, newest first."""
        e = schema.events
        with self.engine.connect() as connection:
            return [_row(r._mapping) for r in connection.execute(sa.select(e).order_by(e.c.id.desc()).limit(limit))]

    def model(self, mid: str) -> dict | None:
        m = schema.models
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(m).where(m.c.id == mid)).first()
        return None if row is None else _row(row._mapping)

    def thresholds(self, mid: str) -> list[ThresholdVersion]:
        t = schema.thresholds
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(t).where(t.c.model_id == mid).order_by(t.c.version))
            return [ThresholdVersion(**_row(r._mapping)) for r in rows]

    def current_threshold(self, mid: str) -> ThresholdVersion | None:
        """The newest threshold version of model `mid` (None when the model is unknown)."""
        with self.engine.connect() as connection:
            return self._newest_threshold(connection, mid)

    def _newest_threshold(self, connection: Connection, mid: str) -> ThresholdVersion | None:
        t = schema.thresholds
        row = connection.execute(sa.select(t).where(t.c.model_id == mid).order_by(t.c.version.desc()).limit(1)).first()
        return None if row is None else ThresholdVersion(**_row(row._mapping))
