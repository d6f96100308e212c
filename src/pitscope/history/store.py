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
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pitscope import __version__
from pitscope.files import json_safe
from pitscope.growth import AlertRule, slope_per_day
from pitscope.history import HistoryError, HistoryUnavailable, schema
from pitscope.history.names import as_utc

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86_400.0
SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
SOURCES = ("cli", "http", "page")
DECISIONS = ("defective", "good")
IMAGE_STORES = ("none", "path", "copy")
COPY_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{64}\.[A-Za-z0-9]{1,8}")  # how store_image names a copy


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def database_url(spec: str | os.PathLike) -> str:
    """An SQLAlchemy URL from a URL (kept) or a file path (an SQLite file, made absolute)."""
    text = str(spec)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


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


def _head_revision() -> tuple[str, set[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(_migrations_dir()))
    head = script.get_current_head()
    if head is None:
        raise HistoryError(f"{_migrations_dir()}: no schema migration found (a broken installation)")
    return head, {rev.revision for rev in script.walk_revisions()}


def _file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file: tells the file opened from one put at its path later."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _inserted_id(result: sa.CursorResult) -> int:
    """The primary key of the row an INSERT just wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise HistoryError("the database returned no key for the row just written")
    return int(key[0])


def _migrations_dir() -> Path:
    return Path(str(resources.files("pitscope.history") / "migrations"))


def _alembic_config(connection: Connection):
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.attributes["connection"] = connection
    return config


def _row(mapping) -> dict:
    """A result row as a dict with its times in UTC (SQLite gives them back without a zone)."""
    out = dict(mapping)
    for key, value in out.items():
        if isinstance(value, dt.datetime):
            out[key] = as_utc(value)
    return out


class HistoryStore:
    """One inspection history database (see the module docstring).

    spec: an SQLite file path or an SQLAlchemy URL (`postgresql+psycopg://user@host:port/db`).
    upgrade: bring an older schema to the newest (an empty database gets the whole schema).
    image_store: what an inspection keeps of its photo: "none", "path" (the file path it was
        read from, when there is one) or "copy" (the bytes, under copies_dir, named by SHA-256).
    copies_dir: where copies go (default: `<database file>.images/` beside an SQLite file).
    """

    def __init__(self, spec: str | os.PathLike, upgrade: bool = True, image_store: str = "none",
                 copies_dir: str | os.PathLike | None = None):
        if image_store not in IMAGE_STORES:
            raise ValueError(f"image_store: {image_store!r} is not one of {', '.join(IMAGE_STORES)}")
        self.url = sa.make_url(database_url(spec))
        self.backend = self.url.get_backend_name()
        if self.backend not in ("sqlite", "postgresql"):
            raise HistoryError(f"{self.display_url}: pitscope keeps its history in SQLite or PostgreSQL, "
                               f"not {self.backend}")
        self.path: Path | None = None
        self._identity: tuple[int, int] | None = None
        self.writable = True
        if self.backend == "sqlite":
            self._check_sqlite_file()
        self.image_store = image_store
        if copies_dir is None and image_store == "copy":
            if self.path is None:
                raise ValueError("image_store='copy' with a database URL needs copies_dir")
            copies_dir = self.path.with_name(self.path.name + ".images")
        self.copies_dir = Path(copies_dir) if copies_dir is not None else None
        self.engine = self._engine()
        self._prepare_schema(upgrade)
        if self.path is not None:
            self._identity = _file_identity(self.path)  # the file opened: a later write checks it is still there

    # -- opening ---------------------------------------------------------------------------
    @property
    def display_url(self) -> str:
        """The URL with its password hidden, for messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def display_name(self) -> str:
        """What clients of the service are told: an SQLite file's name (not where it lies on the
        server), or the PostgreSQL server and database without user or password."""
        if self.path is not None:
            return f"{self.path.name} (SQLite)"
        return f"{self.url.database} on {self.url.host or 'localhost'}:{self.url.port or 5432} (PostgreSQL)"

    def _check_sqlite_file(self) -> None:
        database = self.url.database
        if not database or database == ":memory:":
            raise HistoryError("an in-memory SQLite database keeps no history: give a file path")
        self.path = Path(database)
        if self.path.is_dir():
            raise HistoryError(f"{self.path} is a folder: give a database file path such as {self.path}/history.sqlite")
        if not self.path.parent.is_dir():
            raise HistoryError(f"{self.path}: the folder {self.path.parent} does not exist")
        if self.path.exists():
            with self.path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
            if head and head != SQLITE_MAGIC:
                raise HistoryError(f"{self.path} is not an SQLite database (it holds other data): "
                                   "give a new file name or the path of a pitscope history database")
            self.writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        elif not os.access(self.path.parent, os.W_OK):
            raise HistoryError(f"{self.path}: cannot create the database, the folder {self.path.parent} is read-only")

    def _engine(self) -> Engine:
        if self.backend == "postgresql":
            try:
                return sa.create_engine(self.url, pool_pre_ping=True, pool_size=4, max_overflow=4)
            except ModuleNotFoundError as exc:
                raise HistoryError(f"{self.display_url}: the PostgreSQL driver is not installed ({exc.name}): "
                                   "pip install 'pitscope[postgres]'") from None
        assert self.path is not None  # an SQLite database: _check_sqlite_file set it
        read_only = not self.writable
        url = f"file:{self.path}"
        if read_only:
            # a WAL database opened read-only still needs its -shm file: in a read-only folder
            # without one, it is read as immutable (no other process writes there anyway)
            shm = self.path.with_name(self.path.name + "-shm")
            immutable = not os.access(self.path.parent, os.W_OK) and not shm.exists()
            url += "?mode=ro&immutable=1" if immutable else "?mode=ro"
        import sqlite3

        def connect():
            return sqlite3.connect(url, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False,
                                   isolation_level=None)

        engine = sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.QueuePool, pool_size=4,
                                  max_overflow=4)

        @sa.event.listens_for(engine, "connect")
        def pragmas(dbapi_connection, _record) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            if not read_only:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        @sa.event.listens_for(engine, "begin")
        def begin(connection) -> None:
            # writers take the write lock at once; readers never wait on it (WAL)
            write = connection.get_execution_options().get("pitscope_write", False) and not read_only
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def _prepare_schema(self, upgrade: bool) -> None:
        from alembic.runtime.migration import MigrationContext

        head, known = _head_revision()
        try:
            with self.engine.connect() as connection:
                current = MigrationContext.configure(connection).get_current_revision()
                tables = set(sa.inspect(connection).get_table_names())
        except sa.exc.DatabaseError as exc:
            raise HistoryError(f"{self.display_url}: cannot open the database: {_reason(exc)}") from None
        if current is not None and current not in known:
            raise HistoryError(f"{self.display_url} is at schema revision {current}, newer than this pitscope "
                               f"({__version__}) knows (its newest is {head}): upgrade pitscope to use it")
        if current is None and tables - {"alembic_version"}:
            raise HistoryError(f"{self.display_url} already holds tables that are not a pitscope history "
                               f"({', '.join(sorted(tables)[:5])}): give an empty or a pitscope database")
        if current == head:
            return
        if not upgrade or not self.writable:
            raise HistoryError(f"{self.display_url} is at schema revision {current or 'none'}, older than "
                               f"{head}, and {'read-only' if not self.writable else 'not to be upgraded'}: "
                               "open it once writable to upgrade it")
        from alembic import command

        with self.engine.connect() as connection:
            connection.execution_options(pitscope_write=True)
            with connection.begin():
                command.upgrade(_alembic_config(connection), "head")
        logger.info("history database %s upgraded from %s to %s", self.display_url, current or "empty", head)

    def revision(self) -> str | None:
        """The schema revision the database is at."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------
    def _check_same_file(self) -> None:
        """SQLite: raise HistoryUnavailable when the opened file is no longer at its path."""
        if self.path is None:
            return
        try:
            identity = _file_identity(self.path)
        except FileNotFoundError:
            raise HistoryUnavailable(f"the database file {self.path} was deleted while in use: writes are "
                                     "not recorded; restart with a database path to record again") from None
        if identity != self._identity:
            raise HistoryUnavailable(f"the database file {self.path} was replaced by another file while in use: "
                                     "writes are not recorded; restart to use the new file")

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction, or HistoryUnavailable (nothing written) when it cannot commit."""
        if not self.writable:
            raise HistoryUnavailable(f"{self.display_url} is read-only: nothing is recorded")
        self._check_same_file()
        try:
            with self.engine.connect() as connection:
                connection.execution_options(pitscope_write=True)
                with connection.begin():
                    yield connection
        except HistoryUnavailable:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise HistoryUnavailable(f"{self.display_url}: not recorded: {_reason(exc)}") from exc

    def register_model(self, state_dict: dict, name: str, image_threshold: float, pixel_threshold: float,
                       training: dict | None = None, by: str = "pitscope", how: str = "model file") -> tuple[str, ThresholdVersion]:
        """Record a loaded model (once per id) and a `model_load` event; when the thresholds it
        carries differ from its newest threshold version, they become a new version (`how`).
        Returns (model id, the threshold version in force)."""
        mid = model_id(state_dict)
        with self._write() as connection:
            exists = connection.execute(sa.select(schema.models.c.id).where(schema.models.c.id == mid)).first()
            if exists is None:
                connection.execute(schema.models.insert().values(
                    id=mid, name=name, pitscope_version=__version__, training=None if training is None else json.loads(json.dumps(json_safe(training), default=str)),
                    first_seen=now()))
            connection.execute(schema.events.insert().values(
                at=now(), kind="model_load", model_id=mid, by=by,
                new={"name": name, "image_threshold": image_threshold, "pixel_threshold": pixel_threshold}))
            current = self._newest_threshold(connection, mid)
            if (current is None or current.image_threshold != image_threshold
                    or current.pixel_threshold != pixel_threshold):
                current = self._add_threshold(connection, mid, image_threshold, pixel_threshold, by, how, current)
        return mid, current

    def _newest_threshold(self, connection: Connection, mid: str) -> ThresholdVersion | None:
        t = schema.thresholds
        row = connection.execute(sa.select(t).where(t.c.model_id == mid).order_by(t.c.version.desc()).limit(1)).first()
        return None if row is None else ThresholdVersion(**_row(row._mapping))

    def _add_threshold(self, connection: Connection, mid: str, image_threshold: float, pixel_threshold: float,
                       by: str, how: str, previous: ThresholdVersion | None) -> ThresholdVersion:
        version = 1 if previous is None else previous.version + 1
        at = now()
        result = connection.execute(schema.thresholds.insert().values(
            model_id=mid, version=version, image_threshold=float(image_threshold),
            pixel_threshold=float(pixel_threshold), set_by=by, how=how, set_at=at))
        if previous is not None:
            connection.execute(schema.events.insert().values(
                at=at, kind="threshold_change", model_id=mid, by=by,
                old={"version": previous.version, "image_threshold": previous.image_threshold,
                     "pixel_threshold": previous.pixel_threshold},
                new={"version": version, "image_threshold": float(image_threshold),
                     "pixel_threshold": float(pixel_threshold), "how": how}))
        return ThresholdVersion(_inserted_id(result), mid, version, float(image_threshold),
                                float(pixel_threshold), by, how, at)

    def set_threshold(self, mid: str, image_threshold: float, pixel_threshold: float, by: str,
                      how: str) -> ThresholdVersion:
        """A new threshold version of model `mid` and a `threshold_change` event, in one transaction."""
        with self._write() as connection:
            self._lock(connection, f"thresholds:{mid}")
            previous = self._newest_threshold(connection, mid)
            if previous is None:
                raise HistoryUnavailable(f"model {mid[:12]} is not in {self.display_url}: register it first")
            return self._add_threshold(connection, mid, image_threshold, pixel_threshold, by, how, previous)

    def current_threshold(self, mid: str) -> ThresholdVersion | None:
        """The newest threshold version of model `mid` (None when the model is unknown)."""
        with self.engine.connect() as connection:
            return self._newest_threshold(connection, mid)

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

    def record_inspection(self, *, model: str, threshold: ThresholdVersion, source: str, image_sha256: str,
                          width: int, height: int, score: float, image_threshold: float, is_defective: bool,
                          defect_px: int, pixel_threshold: float, duration_ms: float, part: str | None = None,
                          name: str | None = None, captured_at: dt.datetime | None = None,
                          image_ref: str | None = None, map_ref: str | None = None,
                          rule: AlertRule | None = None) -> tuple[int, list[dict]]:
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
            result = connection.execute(schema.inspections.insert().values(
                recorded_at=now(), captured_at=None if captured_at is None else as_utc(captured_at),
                source=source, part=part, name=name, image_sha256=image_sha256, image_ref=image_ref,
                width=int(width), height=int(height), score=float(score), image_threshold=float(image_threshold),
                is_defective=bool(is_defective), defect_px=int(defect_px),
                defect_fraction=float(defect_px) / (int(width) * int(height)), pixel_threshold=float(pixel_threshold),
                map_ref=map_ref, model_id=model, threshold_id=threshold.id, duration_ms=float(duration_ms)))
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
                connection.execute(a.update().where(a.c.id == alert_id).values(acknowledged_at=now(), acknowledged_by=by))
            return _row(connection.execute(sa.select(a).where(a.c.id == alert_id)).one()._mapping)

    def prune(self, older_than_days: float) -> dict:
        """Delete inspections recorded more than `older_than_days` ago, the alerts' links to them,
        and stored copies no remaining inspection refers to. Returns counts."""
        if not older_than_days >= 0:
            raise ValueError(f"older_than_days must be >= 0, got {older_than_days}")
        cutoff = now() - dt.timedelta(days=older_than_days)
        i = schema.inspections
        with self._write() as connection:
            old_refs = {r for (r,) in connection.execute(
                sa.select(i.c.image_ref).where(i.c.recorded_at < cutoff, i.c.image_ref.is_not(None)).distinct())}
            old_refs |= {r for (r,) in connection.execute(
                sa.select(i.c.map_ref).where(i.c.recorded_at < cutoff, i.c.map_ref.is_not(None)).distinct())}
            old_ids = sa.select(i.c.id).where(i.c.recorded_at < cutoff)
            connection.execute(schema.alerts.update().where(schema.alerts.c.inspection_id.in_(old_ids))
                               .values(inspection_id=None))
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

    # -- reading ---------------------------------------------------------------------------
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

    def inspections(self, *, limit: int | None = 100, offset: int = 0, newest_first: bool = True,
                    **filters) -> list[dict]:
        """Inspections matching the filters (part, since, until, decision, model id prefix, source),
        newest recorded first (or oldest first), as dicts of the table's columns plus
        `threshold_version`."""
        i, t = schema.inspections, schema.thresholds
        query = (sa.select(i, t.c.version.label("threshold_version")).join(t, t.c.id == i.c.threshold_id)
                 .where(*self._filters(**filters))
                 .order_by(i.c.id.desc() if newest_first else i.c.id.asc()).offset(offset))
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_row(r._mapping) for r in connection.execute(query)]

    def count(self, **filters) -> int:
        """How many inspections match the filters of `inspections`."""
        query = sa.select(sa.func.count()).select_from(schema.inspections).where(*self._filters(**filters))
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def trend(self, part: str, since: dt.datetime | None = None, until: dt.datetime | None = None) -> list[dict]:
        """A part's inspections in capture order (capture time, else recorded time; then id):
        dicts of id, time, captured_at, name, width, height, score, image_threshold, is_defective,
        defect_px, defect_fraction, pixel_threshold, model_id."""
        i = schema.inspections
        when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at).label("time")
        query = (sa.select(i.c.id, when, i.c.captured_at, i.c.name, i.c.width, i.c.height, i.c.score,
                           i.c.image_threshold, i.c.is_defective, i.c.defect_px, i.c.defect_fraction,
                           i.c.pixel_threshold, i.c.model_id)
                 .where(*self._filters(part=part, since=since, until=until)).order_by(when, i.c.id))
        with self.engine.connect() as connection:
            rows = [_row(r._mapping) for r in connection.execute(query)]
        for row in rows:  # SQLite returns coalesce() as text
            if isinstance(row["time"], str):
                row["time"] = as_utc(dt.datetime.fromisoformat(row["time"]))
        return rows

    def parts(self) -> list[dict]:
        """Every part with inspections: part, inspections, last time, open alerts."""
        i, a = schema.inspections, schema.alerts
        when = sa.func.max(sa.func.coalesce(i.c.captured_at, i.c.recorded_at))
        query = sa.select(i.c.part, sa.func.count().label("inspections"), when.label("last")).where(
            i.c.part.is_not(None)).group_by(i.c.part).order_by(i.c.part)
        open_alerts = sa.select(a.c.part, sa.func.count().label("n")).where(a.c.acknowledged_at.is_(None)).group_by(a.c.part)
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


def evaluate_alerts(connection: Connection, part: str, inspection: int, rule: AlertRule) -> list[dict]:
    """The wear rule on `part` at its inspection `inspection` (already inserted), inside the caller's
    transaction. Each of the rule's conditions ("area", "growth") that holds raises an alert,
    unless the part has one for it that is neither acknowledged nor cleared; a condition that
    does not hold clears the part's open alerts for it. Returns the alerts raised, as dicts.

    area:   the inspection's predicted area fraction > rule.area_fraction_above;
    growth: the slope of the part's area fraction per day over the inspections captured within
            rule.window_days before this one (inclusive) > rule.growth_per_day_above, exactly
            as `AlertRule.fires` (`trailing_growth`) computes it offline.
    """
    i, a = schema.inspections, schema.alerts
    when = sa.func.coalesce(i.c.captured_at, i.c.recorded_at)
    row = connection.execute(sa.select(when.label("time"), i.c.defect_fraction).where(i.c.id == inspection)).one()
    time = row.time if isinstance(row.time, dt.datetime) else dt.datetime.fromisoformat(row.time)
    time = as_utc(time)
    checks: dict[str, tuple[bool, dict]] = {}
    if rule.area_fraction_above is not None:
        checks["area"] = (row.defect_fraction > rule.area_fraction_above,
                          {"defect_fraction": row.defect_fraction, "limit": rule.area_fraction_above})
    if rule.growth_per_day_above is not None:
        start = time - dt.timedelta(days=rule.window_days)
        window = connection.execute(
            sa.select(when.label("time"), i.c.defect_fraction)
            .where(i.c.part == part, when >= start, when <= time).order_by(when, i.c.id)).all()
        times = [as_utc(t if isinstance(t, dt.datetime) else dt.datetime.fromisoformat(t)) for t, _ in window]
        days = [(t - times[0]).total_seconds() / SECONDS_PER_DAY for t in times]
        # the window is exactly the points trailing_growth would take for this inspection
        slope = slope_per_day(days, [f for _, f in window])
        growth = float("nan") if slope is None else slope
        holds = growth == growth and growth > rule.growth_per_day_above  # NaN: fewer than 2 distinct days
        checks["growth"] = (holds, {"growth_per_day": growth if growth == growth else None,
                                    "limit": rule.growth_per_day_above, "window_days": rule.window_days,
                                    "points": len(window)})
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
        result = connection.execute(a.insert().values(part=part, rule=name, values=values, raised_at=at,
                                                      inspection_id=inspection))
        raised.append({"id": _inserted_id(result), "part": part, "rule": name, "values": values,
                       "raised_at": at.isoformat(timespec="seconds"), "inspection_id": inspection})
    return raised


def _reason(exc: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy appends SQL and a link)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__

