"""Where the database is, and how to open it: the one module that knows SQLite from PostgreSQL.

A `Database` is cheap to create and makes its engine lazily in each process (an engine must not cross a
`fork()`, and background jobs are forked). SQLite writers use WAL so readers keep reading while the indexer
writes; readers open the file read-only. On PostgreSQL every reader session is one read-only snapshot
(REPEATABLE READ), so a page never mixes two generations of a dataset while indexers write.

A file of an older schema version that dinoscope knows how to upgrade is upgraded in place by the first writer that
opens it. An upgrade only adds tables, so until then a reader reads it as the upgraded file without them (a
dashboard keeps serving a file that `dinoscope index` has not opened since dinoscope was upgraded).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, make_url, select, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.errors import (
    ConflictingWrite,
    DatabaseNotFound,
    DatabaseUnreachable,
    DinoscopeDbError,
    NotADinoscopeDatabase,
    SchemaMismatch,
)
from db.schema import SCHEMA_VERSION, SCHEMA_VERSION_INFO, Base, SchemaInfo, UploadedSet

log = logging.getLogger(__name__)
DB_ENV = "DINOSCOPE_DB"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# psycopg (3) is the PostgreSQL driver dinoscope installs; SQLAlchemy 2.0 would look for psycopg2 under these.
_SCHEME_ALIASES = {"postgres": "postgresql+psycopg", "postgresql": "postgresql+psycopg"}
# Any constant will do: it names the advisory lock that writers creating the schema on PostgreSQL queue for.
_SCHEMA_LOCK_KEY = 0x64696E6F


def default_database_path() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "dinoscope" / "dinoscope.db"


def default_uploads_dir(url: str) -> Path:
    """Where image sets uploaded to the dashboard go unless told: an `uploads` folder beside a SQLite database file,
    else one in the data folder ($XDG_DATA_HOME/dinoscope)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database).parent / "uploads"
    return default_database_path().parent / "uploads"


def resolve_url(db: str | None) -> str:
    """A SQLAlchemy URL from `--db`: a URL as given, a file path as SQLite, nothing as $DINOSCOPE_DB or the default."""
    db = db or os.environ.get(DB_ENV) or str(default_database_path())
    if "://" in db:
        scheme, rest = db.split("://", 1)
        return f"{_SCHEME_ALIASES.get(scheme, scheme)}://{rest}"
    return f"sqlite:///{Path(db).expanduser().resolve()}"


def display_url(url: str) -> str:
    """The URL for messages: a SQLite file as its path, a server URL without its password."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return re.sub(r"://([^:/@]*):[^/]*@", r"://\1:***@", url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    return parsed.render_as_string(hide_password=True)


class Database:
    """An opened dinoscope database: `with db.session() as s:` is one transaction, committed on success."""

    def __init__(self, url: str, *, readonly: bool) -> None:
        self.url = url
        self.readonly = readonly
        self._engine: Engine | None = None
        self._pid = -1
        self._sessions: sessionmaker[Session] | None = None
        parsed = make_url(url)
        on_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        self._file = Path(parsed.database) if on_file else None
        self.identity: tuple[int, int] | None = None  # the SQLite file the engine was opened on (device, inode)
        self.schema_version = SCHEMA_VERSION  # older where a reader opened a file no writer has upgraded yet
        self._reopening = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({display_url(self.url)!r}, readonly={self.readonly})"

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                self._engine.dispose(close=False)  # the parent's connections stay the parent's
            engine = _create_engine(self.url, readonly=self.readonly)
            if self._file is not None:
                try:
                    engine.connect().close()  # a writer's first connection makes the file
                except OperationalError as error:
                    engine.dispose()
                    raise DatabaseUnreachable(f"cannot open database {self._file}: {_first_line(error.orig)}") \
                        from error
                self.identity = _file_identity(self._file)
            self._engine = engine
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
            self._pid = os.getpid()
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction, committed on success. A database that cannot be reached raises DatabaseUnreachable; a
        write that conflicts with another process's (a unique key taken meanwhile) raises ConflictingWrite."""
        self.engine  # noqa: B018  (makes the engine and session factory for this process)
        if self._file is not None:
            self._check_file()
        try:
            with self._sessions.begin() as session:
                session.info[SCHEMA_VERSION_INFO] = self.schema_version
                yield session
        except OperationalError as error:
            raise DatabaseUnreachable(f"database {display_url(self.url)}: {_first_line(error.orig)}") from error
        except IntegrityError as error:
            raise ConflictingWrite(f"database {display_url(self.url)}: another process wrote the same rows at once "
                                   f"({_first_line(error.orig)})") from error

    def _check_file(self) -> None:
        """A SQLite file replaced (renamed over) or deleted while open must not be read on old connections beside new
        ones: a reader opens the new file afresh, with its schema checked; a writer, which holds ids of the old
        file, stops. One `stat` per session."""
        found = _file_identity(self._file)
        if found == self.identity:
            return
        if found is None:
            raise DatabaseNotFound(f"the database file {self._file} was deleted or moved while dinoscope was using"
                                   " it: put it back, or index into it again")
        if not self.readonly:
            raise DatabaseUnreachable(f"the database file {self._file} was replaced by another file while this"
                                      " process was writing to it: run the command again")
        with self._reopening:
            if _file_identity(self._file) == self.identity:
                return  # another thread reopened it
            log.warning("database file %s was replaced: reopening it", self._file)
            self.dispose()
            self.engine  # noqa: B018  (a new engine on the new file)
            try:
                _check_schema(self)
            except DinoscopeDbError:
                self.identity = None  # checked again next time: the file may be put right
                raise

    def checkpoint(self) -> None:
        """Fold SQLite's write-ahead log back into the database file, so the file alone holds everything (to
        copy it, say). Only the writer does this: concurrent checkpoints are what SQLite 3.40's WAL bug needs."""
        if self.is_sqlite and not self.readonly:
            connection = self.engine.raw_connection()  # in autocommit: a checkpoint cannot run in a transaction
            try:
                connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                connection.close()

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def open_database(db: str | None = None, *, readonly: bool = False) -> Database:
    """Open (a writer creates, if need be) the database that `--db` names, and check its schema version."""
    url = resolve_url(db)
    parsed = _parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database)
        if readonly and not path.exists():
            raise DatabaseNotFound(f"no database at {path}: index a folder into it first with `dinoscope index`")
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
    database = Database(url, readonly=readonly)
    _check_schema(database)
    return database


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as error:
        raise DatabaseUnreachable(
            f"cannot use database URL {display_url(url)}: {_first_line(error)}"
            " (expected a file path or a URL like postgresql+psycopg://USER@HOST:5432/DATABASE)"
        ) from error


def _first_line(error: BaseException | None) -> str:
    return str(error).strip().splitlines()[0] if error and str(error).strip() else type(error).__name__


def _create_engine(url: str, *, readonly: bool) -> Engine:
    parsed = make_url(url)
    try:
        if parsed.get_backend_name() == "postgresql" and readonly:
            return create_engine(url, pool_pre_ping=True, isolation_level="REPEATABLE READ",
                                 execution_options={"postgresql_readonly": True})
        if parsed.get_backend_name() != "sqlite":
            return create_engine(url, pool_pre_ping=True)
        connect_url = f"sqlite:///file:{parsed.database}?mode=ro&uri=true" if readonly else url
        engine = create_engine(connect_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    except (NoSuchModuleError, ModuleNotFoundError, ArgumentError) as error:
        raise DatabaseUnreachable(
            f"cannot use database URL {display_url(url)}: {_first_line(error)}"
            " (for PostgreSQL: pip install 'dinoscope[postgres]' and use postgresql+psycopg://...)"
        ) from error
    _configure_sqlite(engine, readonly=readonly)
    return engine


def _configure_sqlite(engine: Engine, *, readonly: bool) -> None:
    """Pragmas per connection, and explicit BEGINs: pysqlite's own transaction handling would otherwise run each
    SELECT outside a snapshot and upgrade a writer's lock late (the SQLAlchemy docs' recipe)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if readonly:
            cursor.execute("PRAGMA query_only=ON")
        else:
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _switch_to_wal(cursor, tries: int = 100, pause_s: float = 0.05) -> None:
    """WAL mode, set once in the file. Writers opening a new file at the same moment contend for the switch, and
    SQLite answers "database is locked" there at once rather than waiting out the busy timeout: try again."""
    for attempt in range(tries):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == tries - 1:
                raise
            time.sleep(pause_s)


def _create_schema(database: Database) -> None:
    """Create the tables once, however many writers (index shards) open a new database at the same moment: the
    transaction holds SQLite's write lock (BEGIN IMMEDIATE) or a PostgreSQL advisory lock, and looks again."""
    with database.session() as session:
        connection = session.connection()
        if not database.is_sqlite:
            connection.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        if not inspect(connection).has_table(SchemaInfo.__tablename__):
            Base.metadata.create_all(connection)
            session.add(SchemaInfo(version=SCHEMA_VERSION))


def _add_uploaded_sets(connection: Connection) -> None:
    UploadedSet.__table__.create(connection)


# What turns a file of each older version into the next version's, in the upgrading writer's transaction: it only
# adds tables (see the module's docstring).
_UPGRADES: dict[int, Callable[[Connection], None]] = {2: _add_uploaded_sets}


def _upgrade_schema(database: Database) -> None:
    """Upgrade an older file in place, once however many writers open it at the same moment: every step and the new
    version in one transaction, which holds the lock that _create_schema takes and looks at the version again."""
    with database.session() as session:
        connection = session.connection()
        if not database.is_sqlite:
            connection.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK_KEY)))
        found = version = session.scalar(select(SchemaInfo.version))
        while version in _UPGRADES:
            _UPGRADES[version](connection)
            version += 1
        if version != found:
            session.execute(update(SchemaInfo).values(version=version))
    if version != found:
        log.warning("upgraded database %s from schema %d to %d", display_url(database.url), found, version)


def _check_schema(database: Database) -> None:
    where = display_url(database.url)
    try:
        with database.engine.connect() as connection:
            tables = set(inspect(connection).get_table_names())
    except OperationalError as error:
        raise DatabaseUnreachable(f"cannot open database {where}: {_first_line(error.orig)}") from error
    if SchemaInfo.__tablename__ not in tables:
        if tables and set(Base.metadata.tables) & tables:
            raise NotADinoscopeDatabase(f"{where} has dinoscope tables but no schema version: it is damaged")
        if tables and database.is_sqlite:
            raise NotADinoscopeDatabase(
                f"{where} is not a dinoscope database (it holds tables {', '.join(sorted(tables)[:3])}):"
                " point --db at another file"
            )
        if database.readonly:
            raise NotADinoscopeDatabase(f"{where} holds no dinoscope data yet: run `dinoscope index` into it first")
        _create_schema(database)
    database.schema_version = SCHEMA_VERSION
    with database.session() as session:
        versions = session.scalars(select(SchemaInfo.version)).all()
    if len(versions) == 1 and versions[0] in _UPGRADES:
        if database.readonly:
            database.schema_version = versions[0]
            log.info("database %s has schema %d: the next writer to open it upgrades it to %d", where, versions[0],
                     SCHEMA_VERSION)
            return
        _upgrade_schema(database)
        with database.session() as session:
            versions = session.scalars(select(SchemaInfo.version)).all()
    if versions != [SCHEMA_VERSION]:
        found = max(versions) if versions else None
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"{where} was written by a newer dinoscope (schema {found}; this one reads {SCHEMA_VERSION}):"
                " upgrade dinoscope to open it"
            )
        raise SchemaMismatch(
            f"{where} was written by an older dinoscope (schema {found}; this one reads {SCHEMA_VERSION}) and"
            " cannot be upgraded in place: index your folders into a new database (--db NEW_FILE)"
        )
