"""The local SQLite ledger: the only place that opens it through SQLAlchemy, checks its path and
permissions, migrates it, and runs transactions.

Every connection uses WAL and a busy timeout; writers start with BEGIN IMMEDIATE so that two
writers queue on the busy handler instead of failing half-way ("database is locked").
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from broker import cache, locks, settings
from broker.errors import (
    BrokerError,
    DatabaseCorrupt,
    DatabaseError,
    DatabaseLocked,
    DatabaseTooNew,
    PathNotWritable,
    UnsafePermissions,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from alembic.config import Config as AlembicConfig

log = logging.getLogger(__name__)

BUSY_TIMEOUT_SECONDS = 30.0
MIGRATE_LOCK_SECONDS = 60.0


def prepare_path(path: str) -> None:
    """Create the database directory (0700) and file (0600) if missing; refuse unsafe ones."""
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise PathNotWritable(f"database path {path} is a directory; give a file path with --db or BROKER_DB")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise PathNotWritable(f"cannot create database directory {directory}: {exc.strerror}") from None
    check_permissions(directory, "database directory", 0o700)
    if not os.path.exists(path):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise PathNotWritable(f"cannot create database {path}: {exc.strerror}") from None
    check_permissions(path, "database", 0o600)
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(directory, os.W_OK | os.X_OK):
        raise PathNotWritable(
            f"database {path} is not writable by this user; check its permissions (chmod 600) "
            f"and its directory's (chmod 700)"
        )


def check_permissions(path: str, what: str, wanted: int) -> None:
    """Refuse a file or directory that another user owns or that group/others may write."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise PathNotWritable(f"cannot read {what} {path}: {exc.strerror}") from None
    problem = settings.permission_problem(path, info, wanted)
    if problem:
        raise UnsafePermissions(f"{what} {problem}")


def _translate(exc: BaseException, path: str) -> BrokerError:
    message = str(getattr(exc, "orig", exc)).lower()
    if "locked" in message or "busy" in message:
        return DatabaseLocked(
            f"database {path} stayed locked by another process for {BUSY_TIMEOUT_SECONDS:g}s; try again"
        )
    if "not a database" in message or "malformed" in message or "corrupt" in message:
        return DatabaseCorrupt(
            f"database {path} is not a broker database or is damaged; move it aside and broker will start a new one"
        )
    if "readonly" in message or "read-only" in message or "unable to open" in message or "disk i/o" in message:
        return PathNotWritable(f"database {path} cannot be written ({message}); check the file and its directory")
    return DatabaseError(f"database {path}: {message}")


@contextlib.contextmanager
def translated(path: str) -> Iterator[None]:
    """Turn sqlite3 / SQLAlchemy database errors into one-line BrokerErrors."""
    try:
        yield
    except (DBAPIError, sqlite3.Error) as exc:
        raise _translate(exc, path) from None


def open_engine(path: str) -> Engine:
    """An engine on the ledger at `path`, created, checked and migrated to this code's schema."""
    prepare_path(path)
    engine = create_engine(
        URL.create("sqlite", database=path),
        connect_args={"timeout": BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "BEGIN" if conn.get_execution_options().get("broker_read_only") else "BEGIN IMMEDIATE"
        conn.exec_driver_sql(mode)

    with translated(path):
        ensure_schema(engine, path)
    return engine


def read_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        raw = cast(sqlite3.Connection, conn.connection.driver_connection)  # pysqlite's
        try:
            row = raw.execute(cache.SCHEMA_QUERY).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
    return row[0] if row else None


def ensure_schema(engine: Engine, path: str) -> None:
    """Bring the database to cache.SCHEMA_HEAD with Alembic, once, under a lock; refuse newer ones."""
    if read_revision(engine) == cache.SCHEMA_HEAD:
        return
    with locks.hold(locks.lock_path(path, "migrate"), MIGRATE_LOCK_SECONDS, "schema migration lock"):
        current = read_revision(engine)
        if current == cache.SCHEMA_HEAD:
            return
        config = alembic_config()
        from alembic.script import ScriptDirectory

        known = {rev.revision for rev in ScriptDirectory.from_config(config).walk_revisions()}
        if current is not None and current not in known:
            raise DatabaseTooNew(
                f"database {path} has schema {current}, newer than this broker understands "
                f"(it knows up to {cache.SCHEMA_HEAD}); upgrade broker, it never downgrades a database"
            )
        if current is not None:
            backup(engine, path, current)
        from alembic import command

        log.info("migrating %s from %s to %s", path, current or "empty", cache.SCHEMA_HEAD)
        with engine.begin() as conn:
            command.upgrade(alembic_config(connection=conn), "head")


def backup(engine: Engine, path: str, revision: str) -> str:
    """Copy the database aside before an upgrade, with SQLite's online backup (0600)."""
    target = f"{path}.{revision}.{time.strftime('%Y%m%dT%H%M%S')}.bak"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    with engine.connect() as conn, contextlib.closing(sqlite3.connect(target)) as dest:
        cast(sqlite3.Connection, conn.connection.driver_connection).backup(dest)
    log.info("backed up %s to %s", path, target)
    return target


def migrations_dir() -> str:
    """The Alembic scripts: inside the installed package, else the checkout's migrations/."""
    import broker

    package_dir = os.path.dirname(os.path.abspath(broker.__file__))
    for candidate in (
        os.path.join(package_dir, "migrations"),
        os.path.join(os.path.dirname(package_dir), "migrations"),
    ):
        if os.path.isfile(os.path.join(candidate, "env.py")):
            return candidate
    raise BrokerError("broker's migration scripts are missing from this installation; reinstall broker")


def alembic_config(script_location: str | None = None, connection: Connection | None = None) -> AlembicConfig:
    """An Alembic Config built in code (no ini file, so no logging set-up): the local migrations,
    or those in `script_location`, run on `connection` when given ("Sharing a Connection")."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", (script_location or migrations_dir()).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def run_migration_env(context: Any, metadata: MetaData, url: str | None, **options: Any) -> None:
    """The body of both Alembic env.py files (local and fleet): migrate the connection broker passes
    in `config.attributes["connection"]`, or, when a developer runs `alembic` from a checkout, the
    database at `url` (logging configured from the ini file only then)."""
    config = context.config

    def run(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=metadata, **options)
        with context.begin_transaction():
            context.run_migrations()

    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    if config.config_file_name:
        from logging.config import fileConfig

        fileConfig(config.config_file_name, disable_existing_loggers=False)
    with create_engine(url or config.get_main_option("sqlalchemy.url")).connect() as conn:
        run(conn)
        conn.commit()


@contextlib.contextmanager
def transaction(engine: Engine, path: str, *, read_only: bool = False) -> Iterator[Session]:
    """A Session in one short transaction: committed on success, rolled back on error.
    Writers take the write lock up front (BEGIN IMMEDIATE); readers use a deferred BEGIN."""
    with translated(path), engine.connect() as conn:
        if read_only:
            conn = conn.execution_options(broker_read_only=True)
        with Session(bind=conn, expire_on_commit=False) as session, session.begin():
            yield session


def now() -> int:
    return int(time.time())
