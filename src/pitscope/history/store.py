"""The inspection history store: SQLite (a file, the default) or PostgreSQL (a URL).

`HistoryStore(spec)` opens the database named by a path or an SQLAlchemy URL and brings an
older schema up to the newest migration (Alembic, `migrations/`). It refuses, with one
sentence each, a file that is not an SQLite database, a database at a schema newer than this
pitscope, and a path whose folder does not exist. A read-only database opens for reading; its
writes raise `HistoryUnavailable`.

Writes are single transactions. On SQLite each begins with `BEGIN IMMEDIATE` (the write lock
is taken at once, so two processes never deadlock upgrading a read lock) in WAL mode with
`synchronous=FULL` (a commit that returned is on disk) and a busy timeout, so several service
workers share one file. Before each SQLite write the store checks that the file it opened is
still the one at its path: a deleted or replaced file would otherwise keep taking writes
through its open handle and lose them. Any failure of a write raises `HistoryUnavailable`, so a
caller knows an inspection was recorded only when `record_inspection` returned its id.

Times are stored in UTC; trends and the alert rule run on the capture time, or the recorded
time of an inspection without one.

The store is built in three layers: `database.HistoryDatabase` opens the database and runs the
write transaction, `queries.HistoryQueries` adds the reading queries, and `HistoryStore` here
adds the writes and the wear alert rule.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pitscope import __version__
from pitscope.files import json_safe
from pitscope.growth import AlertRule, slope_per_day, trailing_median
from pitscope.history import HistoryError, HistoryUnavailable, schema
from pitscope.history.database import _alembic_config as _alembic_config  # kept importable from here
from pitscope.history.database import _head_revision as _head_revision
from pitscope.history.database import database_url as database_url
from pitscope.history.names import as_utc
from pitscope.history.queries import HistoryQueries, ThresholdVersion, _row, fractions_before

SECONDS_PER_DAY = 86_400.0
SOURCES = ("cli", "http", "page")
COPY_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}\.[A-Za-z0-9]{1,8}")  # how store_image names a copy


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def model_id(state_dict: dict) -> str:
    """SHA-256 of a detector's tensors (network and fitted scorers), in key order, without its
    thresholds: a new threshold keeps the model's id, new weights or scorers give a new one."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key in ("threshold", "pixel_threshold"):
            continue
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(-1).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _inserted_id(result: sa.CursorResult) -> int:
    """The primary key of the row an INSERT just wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise HistoryError("the database returned no key for the row just written")
    return int(key[0])


class HistoryStore(HistoryQueries):
    """One inspection history database (see the module docstring).

    spec: an SQLite file path or an SQLAlchemy URL (`postgresql+psycopg://user@host:port/db`).
    upgrade: bring an older schema to the newest (an empty database gets the whole schema).
    image_store: what an inspection keeps of its photo: "none", "path" (the file path it was
        read from, when there is one) or "copy" (the bytes, under copies_dir, named by SHA-256).
    copies_dir: where copies go (default: `<database file>.images/` beside an SQLite file).
    """

    def register_model(
        self,
        state_dict: dict,
        name: str,
        image_threshold: float,
        pixel_threshold: float,
        training: dict | None = None,
        by: str = "pitscope",
        how: str = "model file",
    ) -> tuple[str, ThresholdVersion]:
        """Record a loaded model (once per id) and a `model_load` event; when the thresholds it
        carries differ from its newest threshold version, they become a new version (`how`).
        Returns (model id, the threshold version in force)."""
        mid = model_id(state_dict)
        with self._write() as connection:
            exists = connection.execute(sa.select(schema.models.c.id).where(schema.models.c.id == mid)).first()
            if exists is None:
                connection.execute(
                    schema.models.insert().values(
                        id=mid,
                        name=name,
                        pitscope_version=__version__,
                        training=None if training is None else json.loads(json.dumps(json_safe(training), default=str)),
                        first_seen=now(),
                    )
                )
            connection.execute(
                schema.events.insert().values(
                    at=now(),
                    kind="model_load",
                    model_id=mid,
                    by=by,
                    new={"name": name, "image_threshold": image_threshold, "pixel_threshold": pixel_threshold},
                )
            )
            current = self._newest_threshold(connection, mid)
            if (
                current is None
                or current.image_threshold != image_threshold
                or current.pixel_threshold != pixel_threshold
            ):
                current = self._add_threshold(connection, mid, image_threshold, pixel_threshold, by, how, current)
        return mid, current

    def _add_threshold(
        self,
        connection: Connection,
        mid: str,
        image_threshold: float,
        pixel_threshold: float,
        by: str,
        how: str,
        previous: ThresholdVersion | None,
    ) -> ThresholdVersion:
        version = 1 if previous is None else previous.version + 1
        at = now()
        result = connection.execute(
            schema.thresholds.insert().values(
                model_id=mid,
                version=version,
                image_threshold=float(image_threshold),
                pixel_threshold=float(pixel_threshold),
                set_by=by,
                how=how,
                set_at=at,
            )
        )
        if previous is not None:
            connection.execute(
                schema.events.insert().values(
                    at=at,
                    kind="threshold_change",
                    model_id=mid,
                    by=by,
                    old={
                        "version": previous.version,
                        "image_threshold": previous.image_threshold,
                        "pixel_threshold": previous.pixel_threshold,
                    },
                    new={
                        "version": version,
                        "image_threshold": float(image_threshold),
                        "pixel_threshold": float(pixel_threshold),
                        "how": how,
                    },
                )
            )
        return ThresholdVersion(
            _inserted_id(result), mid, version, float(image_threshold), float(pixel_threshold), by, how, at
        )

    def set_threshold(
        self, mid: str, image_threshold: float, pixel_threshold: float, by: str, how: str
    ) -> ThresholdVersion:
        """A new threshold version of model `mid` and a `threshold_change` event, in one transaction."""
        with self._write() as connection:
            self._lock(connection, f"thresholds:{mid}")
            previous = self._newest_threshold(connection, mid)
            if previous is None:
                raise HistoryUnavailable(f"model {mid[:12]} is not in {self.display_url}: register it first")
            return self._add_threshold(connection, mid, image_threshold, pixel_threshold, by, how, previous)

    def _lock(self, connection: Connection, key: str) -> None:
        """Serialise writers on `key` (PostgreSQL advisory lock; SQLite's write lock already does)."""
        if self.backend == "postgresql":
            number = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": number})

    def store_image(self, data: bytes, suffix: str = ".png") -> str | None:
        """Keep a copy of an image's bytes under copies_dir (named by SHA-256; once per content).
        Returns its reference (path relative to copies_dir), or None when copies are off."""
        if self.image_store != "copy" or self.copies_dir is None:
            return None
        digest = hashlib.sha256(data).hexdigest()
        relative = Path(digest[:2]) / f"{digest}{suffix.lower()}"
        target = self.copies_dir / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            partial.write_bytes(data)
            os.replace(partial, target)
        return relative.as_posix()

    def record_inspection(
        self,
        *,
        model: str,
        threshold: ThresholdVersion,
        source: str,
        image_sha256: str,
        width: int,
        height: int,
        score: float,
        image_threshold: float,
        is_defective: bool,
        defect_px: int,
        pixel_threshold: float,
        duration_ms: float,
        part: str | None = None,
        name: str | None = None,
        captured_at: dt.datetime | None = None,
        image_ref: str | None = None,
        map_ref: str | None = None,
        rule: AlertRule | None = None,
    ) -> tuple[int, list[dict]]:
        """Insert one inspection and, for a part with a rule, evaluate the wear alert rule on it
        (`evaluate_alerts`), all in one transaction. Returns (inspection id, alerts raised).
        Raises HistoryUnavailable when nothing was recorded."""
        if source not in SOURCES:
            raise ValueError(f"source: {source!r} is not one of {', '.join(SOURCES)}")
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width} x {height}")
        with self._write() as connection:
            if part is not None and rule is not None:
                self._lock(connection, f"part:{part}")
            result = connection.execute(
                schema.inspections.insert().values(
                    recorded_at=now(),
                    captured_at=None if captured_at is None else as_utc(captured_at),
                    source=source,
                    part=part,
                    name=name,
                    image_sha256=image_sha256,
                    image_ref=image_ref,
                    width=int(width),
                    height=int(height),
                    score=float(score),
                    image_threshold=float(image_threshold),
                    is_defective=bool(is_defective),
                    defect_px=int(defect_px),
                    defect_fraction=float(defect_px) / (int(width) * int(height)),
                    pixel_threshold=float(pixel_threshold),
                    map_ref=map_ref,
                    model_id=model,
                    threshold_id=threshold.id,
                    duration_ms=float(duration_ms),
                )
            )
            inspection = _inserted_id(result)
            raised = []
            if part is not None and rule is not None:
                raised = evaluate_alerts(connection, part, inspection, rule)
        return inspection, raised

    def acknowledge(self, alert_id: int, by: str) -> dict | None:
        """Mark an alert acknowledged (once: a second call keeps the first). None when no such alert."""
        a = schema.alerts
        with self._write() as connection:
            row = connection.execute(sa.select(a).where(a.c.id == alert_id)).first()
            if row is None:
                return None
            if row.acknowledged_at is None:
                connection.execute(
                    a.update().where(a.c.id == alert_id).values(acknowledged_at=now(), acknowledged_by=by)
                )
            return _row(connection.execute(sa.select(a).where(a.c.id == alert_id)).one()._mapping)

    def prune(self, older_than_days: float) -> dict:
        """Delete inspections recorded more than `older_than_days` ago, the alerts' links to them,
        and stored copies no remaining inspection refers to. Returns counts."""
        if not older_than_days >= 0:
            raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
        cutoff = now() - dt.timedelta(days=older_than_days)
        i = schema.inspections
        with self._write() as connection:
            old_refs = {
                r
                for (r,) in connection.execute(
                    sa.select(i.c.image_ref).where(i.c.recorded_at < cutoff, i.c.image_ref.is_not(None)).distinct()
                )
            }
            old_refs |= {
                r
                for (r,) in connection.execute(
                    sa.select(i.c.map_ref).where(i.c.recorded_at < cutoff, i.c.map_ref.is_not(None)).distinct()
                )
            }
            old_ids = sa.select(i.c.id).where(i.c.recorded_at < cutoff)
            connection.execute(
                schema.alerts.update().where(schema.alerts.c.inspection_id.in_(old_ids)).values(inspection_id=None)
            )
            deleted = connection.execute(i.delete().where(i.c.recorded_at < cutoff)).rowcount
            kept = {r for (r,) in connection.execute(sa.select(i.c.image_ref).where(i.c.image_ref.in_(old_refs)))}
            kept |= {r for (r,) in connection.execute(sa.select(i.c.map_ref).where(i.c.map_ref.in_(old_refs)))}
        removed = 0
        if self.image_store == "copy" and self.copies_dir is not None:
            for ref in sorted(old_refs - kept):
                if not COPY_NAME.fullmatch(ref):
                    continue  # a path recorded with image_store="path": the user's own file, never deleted
                target = self.copies_dir / ref
                if target.is_file():
                    target.unlink()
                    removed += 1
        return {"inspections": int(deleted), "copies": removed, "cutoff": cutoff.isoformat(timespec="seconds")}


def evaluate_alerts(connection: Connection, part: str, inspection: int, rule: AlertRule) -> list[dict]:
    """The wear rule on `part` at its inspection `inspection` (already inserted), inside the caller's
    transaction. Each of the rule's conditions ("area", "growth") that holds raises an alert,
    unless the part has one for it that is neither acknowledged nor cleared; a condition that
    does not hold clears the part's open alerts for it. Returns the alerts raised, as dicts.

    area:   the inspection's predicted area fraction > rule.area_fraction_above;
    growth: the slope of the part's area fraction per day over the inspections captured within
            rule.window_days before this one (inclusive) > rule.growth_per_day_above, exactly
            as `AlertRule.fires` (`trailing_growth`) computes it offline.
    With rule.confirm_images k > 1 a condition holds only when it also held at the part's k - 1
    inspections captured before this one (as `AlertRule.fires` counts images in a row). With
    rule.smooth_images k > 1 both conditions read, at each inspection, the median of its area
    and the part's k - 1 inspections before it (as `AlertRule.watched`).
    """
    i = schema.inspections
    when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at)
    row = connection.execute(sa.select(when.label("time"), i.c.defect_fraction).where(i.c.id == inspection)).one()
    time = _utc(row.time)
    checks = _conditions(connection, part, time, inspection, row.defect_fraction, rule)
    if rule.confirm_images > 1:
        earlier = connection.execute(
            sa.select(when.label("time"), i.c.id, i.c.defect_fraction)
            .where(i.c.part == part, i.c.id != inspection, when <= time)
            .order_by(when.desc(), i.c.id.desc())
            .limit(rule.confirm_images - 1)
        ).all()
        before = [_conditions(connection, part, _utc(t), ident, f, rule) for t, ident, f in earlier]
        for name, (holds, values) in checks.items():
            confirmed = len(before) == rule.confirm_images - 1 and all(b[name][0] for b in before)
            checks[name] = (holds and confirmed, {**values, "confirm_images": rule.confirm_images})
    return _raise_or_clear(connection, part, inspection, rule, checks)


def _utc(value) -> dt.datetime:
    return as_utc(value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value))


def _conditions(
    connection: Connection, part: str, time: dt.datetime, ident: int, fraction: float, rule: AlertRule
) -> dict[str, tuple[bool, dict]]:
    """Each of the rule's conditions at one inspection of `part` (id `ident`, captured at `time`,
    predicted area `fraction`): name -> (whether it holds, the values it read)."""
    i = schema.inspections
    when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at)
    k = rule.smooth_images
    checks: dict[str, tuple[bool, dict]] = {}
    if rule.area_fraction_above is not None:
        values = {"defect_fraction": fraction, "limit": rule.area_fraction_above}
        watched = fraction
        if k > 1:
            watched = float(trailing_median([*fractions_before(connection, part, time, ident, k - 1), fraction], k)[-1])
            values = {**values, "watched_fraction": watched, "smooth_images": k}
        checks["area"] = (watched > rule.area_fraction_above, values)
    if rule.growth_per_day_above is not None:
        start = time - dt.timedelta(days=rule.window_days)
        window = connection.execute(
            sa.select(when.label("time"), i.c.id, i.c.defect_fraction)
            .where(i.c.part == part, when >= start, when <= time)
            .order_by(when, i.c.id)
        ).all()
        times = [_utc(t) for t, _, _ in window]
        days = [(t - times[0]).total_seconds() / SECONDS_PER_DAY for t in times]
        areas = [f for _, _, f in window]
        if k > 1:  # each point's median over it and the k - 1 before it, reaching back past the window
            pad = fractions_before(connection, part, times[0], window[0][1], k - 1)
            areas = trailing_median([*pad, *areas], k)[len(pad) :].tolist()
        # the window is exactly the points trailing_growth would take for this inspection
        slope = slope_per_day(days, areas)
        growth = float("nan") if slope is None else slope
        holds = growth == growth and growth > rule.growth_per_day_above  # NaN: fewer than 2 distinct days
        checks["growth"] = (
            holds,
            {
                "growth_per_day": growth if growth == growth else None,
                "limit": rule.growth_per_day_above,
                "window_days": rule.window_days,
                "points": len(window),
                **({"smooth_images": k} if k > 1 else {}),
            },
        )
    return checks


def _raise_or_clear(
    connection: Connection, part: str, inspection: int, rule: AlertRule, checks: dict[str, tuple[bool, dict]]
) -> list[dict]:
    """Raise an alert for each condition that holds (unless one is open for it), clear the open
    ones of those that do not; the alerts raised."""
    a = schema.alerts
    raised = []
    at = now()
    for name, (holds, values) in checks.items():
        open_alerts = (a.c.part == part) & (a.c.rule == name) & a.c.acknowledged_at.is_(None) & a.c.cleared_at.is_(None)
        if not holds:
            connection.execute(a.update().where(open_alerts).values(cleared_at=at))
            continue
        if connection.execute(sa.select(a.c.id).where(open_alerts).limit(1)).first() is not None:
            continue
        values = {**values, "rule": rule.describe()}
        result = connection.execute(
            a.insert().values(part=part, rule=name, values=values, raised_at=at, inspection_id=inspection)
        )
        raised.append(
            {
                "id": _inserted_id(result),
                "part": part,
                "rule": name,
                "values": values,
                "raised_at": at.isoformat(timespec="seconds"),
                "inspection_id": inspection,
            }
        )
    return raised
