"""Opening an inspection history database: the part of `HistoryStore` that connects.

`HistoryDatabase` opens the database named by a path or an SQLAlchemy URL and brings an older
schema up to the newest migration (Alembic, `migrations/`). It refuses, with one sentence each,
a file that is not an SQLite database, a database at a schema newer than this pitscope, and a
path whose folder does not exist. A read-only database opens for reading; its writes raise
`HistoryUnavailable`.

Its `_write` is the one write transaction every write of the store runs in: on SQLite it begins
with `BEGIN IMMEDIATE` in WAL mode with `synchronous=FULL` and a busy timeout, after checking
that the file opened is still the one at its path (`_file_identity`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pitscope import __version__
from pitscope.history import HistoryError, HistoryUnavailable

logger = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_MS = 30_000
IMAGE_STORES = ("none", "path", "copy")


def database_url(spec: str | os.PathLike) -> str:
    """An SQLAlchemy URL from a URL (kept) or a file path (an SQLite file, made absolute)."""
    text = str(spec)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


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


def _migrations_dir() -> Path:
    return Path(str(resources.files("pitscope.history") / "migrations"))


def _alembic_config(connection: Connection):
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(_migrations_dir()))
    config.attributes["connection"] = connection
    return config


def _reason(exc: BaseException) -> str:
    """The driver's own message, first line only (SQLAlchemy appends SQL and a link)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__


class HistoryDatabase:
    """The connection, schema and write transaction of a `HistoryStore` (which documents the
    parameters); the reading queries and the writes build on it."""

    def __init__(
        self,
        spec: str | os.PathLike,
        upgrade: bool = True,
        image_store: str = "none",
        copies_dir: str | os.PathLike | None = None,
    ):
        if image_store not in IMAGE_STORES:
            raise ValueError(f"image_store: {image_store!r} is not one of {', '.join(IMAGE_STORES)}")
        self.url = sa.make_url(database_url(spec))
        self.backend = self.url.get_backend_name()
        if self.backend not in ("sqlite", "postgresql"):
            raise HistoryError(
                f"{self.display_url}: pitscope keeps its history in SQLite or PostgreSQL, not {self.backend}"
            )
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
                raise HistoryError(
                    f"{self.path} is not an SQLite database (it holds other data): "
                    "give a new file name or the path of a pitscope history database"
                )
            self.writable = os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        elif not os.access(self.path.parent, os.W_OK):
            raise HistoryError(f"{self.path}: cannot create the database, the folder {self.path.parent} is read-only")

    def _engine(self) -> Engine:
        if self.backend == "postgresql":
            try:
                return sa.create_engine(self.url, pool_pre_ping=True, pool_size=4, max_overflow=4)
            except ModuleNotFoundError as exc:
                raise HistoryError(
                    f"{self.display_url}: the PostgreSQL driver is not installed ({exc.name}): "
                    "pip install 'pitscope[postgres]'"
                ) from None
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
            return sqlite3.connect(
                url, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
            )

        engine = sa.create_engine(
            "sqlite://", creator=connect, poolclass=sa.pool.QueuePool, pool_size=4, max_overflow=4
        )

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
            raise HistoryError(
                f"{self.display_url} is at schema revision {current}, newer than this pitscope "
                f"({__version__}) knows (its newest is {head}): upgrade pitscope to use it"
            )
        if current is None and tables - {"alembic_version"}:
            raise HistoryError(
                f"{self.display_url} already holds tables that are not a pitscope history "
                f"({', '.join(sorted(tables)[:5])}): give an empty or a pitscope database"
            )
        if current == head:
            return
        if not upgrade or not self.writable:
            raise HistoryError(
                f"{self.display_url} is at schema revision {current or 'none'}, older than "
                f"{head}, and {'read-only' if not self.writable else 'not to be upgraded'}: "
                "open it once writable to upgrade it"
            )
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

    def _check_same_file(self) -> None:
        """SQLite: raise HistoryUnavailable when the opened file is no longer at its path."""
        if self.path is None:
            return
        try:
            identity = _file_identity(self.path)
        except FileNotFoundError:
            raise HistoryUnavailable(
                f"the database file {self.path} was deleted while in use: writes are "
                "not recorded; restart with a database path to record again"
            ) from None
        if identity != self._identity:
            raise HistoryUnavailable(
                f"the database file {self.path} was replaced by another file while in use: "
                "writes are not recorded; restart to use the new file"
            )

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
