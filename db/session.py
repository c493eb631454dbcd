"""Opening the results database: :func:`connect` for writers, :func:`open_existing` for readers.

``connect(url)`` parses ``--db``, prepares the backend (SQLite: its folder,
WAL, a busy timeout, foreign keys; PostgreSQL: a connect timeout and
pre-ping), upgrades the schema to head, and returns the ``Engine``.  A
database that cannot be reached becomes one :class:`DatabaseUnavailableError`
whose message names the masked URL and the cause, which the CLI prints as its
one line (exit code 2).

``open_existing(url)`` is for commands that only read (leaderboard, export,
sweep status): it never creates a file or a folder, never migrates, refuses
a database without alore's schema (:class:`DatabaseNotFoundError`) or at
another revision than this code's (:class:`SchemaVersionError`), and its
connections cannot write (SQLite ``query_only``, PostgreSQL
``default_transaction_read_only``).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DatabaseError as SADatabaseError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from alorectl.db.errors import DatabaseNotFoundError, DatabaseUnavailableError, SchemaVersionError
from alorectl.db.migrate import alembic_config, head_revision, upgrade
from alorectl.db.urls import mask_text, mask_url, parse_db_url

log = logging.getLogger(__name__)

#: Seconds a SQLite writer waits for the lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30
#: Seconds to wait for a PostgreSQL server before giving up (blackholed hosts
#: would otherwise hang for minutes).
PG_CONNECT_TIMEOUT_S = 10


#: What the functions of db.writes / db.leaderboard / db.status accept: an
#: Engine (they open and commit their own transaction), or a Connection or
#: Session (they run inside the caller's transaction; the caller commits).
Bind = Engine | Connection | Session

# Execution option marking a connection that only reads (see _on_begin).
_READ_ONLY = "alore_read_only"


def connect(url: str | URL, *, create: bool = True, migrate: bool = True, echo: bool = False) -> Engine:
    """An engine on the database at ``url``, its schema upgraded to head.

    ``url``: ``sqlite:///path.db`` (the folder is created), a bare file path,
    or ``postgresql+psycopg://user:pass@host:port/db``.  ``create=False``:
    the database must already hold alore's schema (an SQLite file is never
    created; :class:`DatabaseNotFoundError` otherwise), e.g. to resume a sweep.
    ``migrate=False`` only checks that the database answers.  Safe to call
    from several processes at once.  Raises :class:`DatabaseURLError` for a
    bad URL, :class:`DatabaseUnavailableError` when the database cannot be
    reached, :class:`SchemaVersionError` when it is newer than this code.
    """
    parsed = parse_db_url(url)
    masked = mask_url(parsed)
    engine = _engine(parsed, masked, echo, create=create, read_only=False)
    try:
        if not create:
            _schema_revision(engine, masked)  # present; upgrade() below judges the revision
        if migrate:
            revision = upgrade(engine)
        else:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            revision = None
    except BaseException as exc:
        engine.dispose()
        if _unreachable(exc):
            raise DatabaseUnavailableError(masked, _cause(exc, parsed.password)) from exc
        raise
    log.info("database %s ready (schema %s)", masked, revision or "not checked")
    return engine


def open_existing(url: str | URL, *, echo: bool = False) -> Engine:
    """A read-only engine on a database that alore already wrote; nothing is created or migrated.

    Raises :class:`DatabaseNotFoundError` when the SQLite file does not exist
    or the database holds no alore schema yet, :class:`SchemaVersionError`
    when its schema is at another revision than this code's head (a reader
    cannot upgrade it; any sweep command does), and the errors of
    :func:`connect` for bad or unreachable URLs.
    """
    parsed = parse_db_url(url)
    masked = mask_url(parsed)
    engine = _engine(parsed, masked, echo, create=False, read_only=True)
    try:
        revision = _schema_revision(engine, masked)
        head = head_revision()
        if revision != head:
            raise _revision_error(masked, revision, head)
    except BaseException as exc:
        engine.dispose()
        if _unreachable(exc):
            raise DatabaseUnavailableError(masked, _cause(exc, parsed.password)) from exc
        raise
    log.info("database %s opened read-only (schema %s)", masked, revision)
    return engine


def _engine(url: URL, masked: str, echo: bool, *, create: bool, read_only: bool) -> Engine:
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, masked, echo, create=create, read_only=read_only)
    return _postgresql_engine(url, echo, read_only=read_only)


def _schema_revision(engine: Engine, masked: str) -> str:
    """The database's Alembic revision; :class:`DatabaseNotFoundError` when it has none (empty)."""
    with engine.connect() as conn:
        conn.execution_options(**{_READ_ONLY: True})
        heads = MigrationContext.configure(conn).get_current_heads()
    if not heads:
        raise DatabaseNotFoundError(masked, "it holds no alore tables yet")
    return ",".join(heads)


def _revision_error(masked: str, revision: str, head: str) -> SchemaVersionError:
    try:
        ScriptDirectory.from_config(alembic_config()).get_revisions(revision.split(","))
    except (CommandError, RevisionError):  # a revision this code does not ship
        return SchemaVersionError(
            f"database {masked} is at schema revision {revision}, which this version of alore does not know "
            f"(its newest is {head}); upgrade alore or point --db at another database"
        )
    return SchemaVersionError(
        f"database {masked} is at schema revision {revision}, older than this alore's {head}; "
        "a reading command does not upgrade it: resume or run a sweep on it first (that upgrades it)"
    )


def sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory; objects stay readable after commit (no lazy reloads)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def write_scope(bind: Bind) -> Iterator[Connection | Session]:
    """Where a write runs: its own committed transaction for an Engine, else the caller's."""
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            yield conn
    else:
        yield bind


@contextmanager
def read_scope(bind: Bind) -> Iterator[Connection | Session]:
    """Where a read runs; with an Engine, one read-only transaction (rolled back)."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            yield conn
    else:
        yield bind


def dialect_name(bind: Bind) -> str:
    """'sqlite' or 'postgresql'."""
    if isinstance(bind, Session):
        return bind.get_bind().dialect.name
    return bind.dialect.name


def _sqlite_engine(url: URL, masked: str, echo: bool, *, create: bool = True, read_only: bool = False) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    kwargs: dict[str, Any] = {"echo": echo}
    if in_memory:
        # One shared connection, or every pooled connection sees an empty database.
        kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        if create:
            parent = Path(database).expanduser().parent
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DatabaseUnavailableError(masked, f"cannot create folder {parent}: {exc.strerror}") from exc
        elif not url.query.get("uri"):  # a plain path (a file: URI keeps its own open mode)
            url = _open_only(url, masked)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take transaction control away from the sqlite3 module (which would
        # BEGIN only before DML, lazily) so that _on_begin below decides.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        if read_only:
            # Converting to WAL would be a write; alore's files are WAL since their first connect().
            cursor.execute("PRAGMA query_only = ON")
        else:
            # WAL: readers (leaderboard, `sweep status`) never block the writer.
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
        cursor.execute("PRAGMA foreign_keys = ON")  # off by default in SQLite
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # IMMEDIATE takes the write lock at BEGIN, where the busy timeout
        # applies.  A deferred transaction that reads and then writes can fail
        # at once with "database is locked" when another writer got there
        # first (SQLite cannot wait there without risking a deadlock).
        # Pure readers (read_scope) stay deferred so they never block writers.
        if read_only or conn.get_execution_options().get(_READ_ONLY):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another process converts the file.

    Converting a new file to WAL takes an exclusive lock while the file is
    still in rollback-journal mode; when several processes open the new file
    at once, each holds a shared lock and wants the exclusive one, and SQLite
    breaks that deadlock by failing one of them at once ("database is
    locked") instead of calling the busy handler.  WAL is a property of the
    file, so the retry finds it already converted.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.01, 0.05))  # jitter: do not collide again


def _open_only(url: URL, masked: str) -> URL:
    """The SQLite URL as a ``mode=rw`` URI: open the file, never create it.

    ``sqlite3.connect(path)`` creates a missing file, which is how a
    leaderboard typed in the wrong folder used to leave an empty database
    behind; ``mode=rw`` makes SQLite refuse instead, even if the file goes
    away between this check and the first connection.
    """
    path = Path(url.database or "").expanduser().resolve()
    if not path.is_file():
        raise DatabaseNotFoundError(masked, "the file does not exist")
    return url.set(database=f"file:{urllib.parse.quote(str(path))}",
                   query={**url.query, "mode": "rw", "uri": "true"})


def _postgresql_engine(url: URL, echo: bool, *, read_only: bool = False) -> Engine:
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    if read_only:
        # The server refuses any write in this engine's transactions.
        given = url.query.get("options")
        connect_args["options"] = " ".join([*([given] if isinstance(given, str) else []),
                                            "-c default_transaction_read_only=on"])
    # pre-ping: a sweep lasts days; servers and proxies drop idle connections.
    return create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)


def _unreachable(exc: BaseException) -> bool:
    """Connection-level failures; other errors (IntegrityError, ...) are bugs and keep their trace."""
    # A bare DatabaseError is SQLite's "file is not a database".
    return isinstance(exc, (OperationalError, InterfaceError)) or type(exc) is SADatabaseError


def _cause(exc: BaseException, password: str | None) -> str:
    """The driver's own first line, e.g. 'connection to server ... failed: Connection refused'."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    cause = " ".join(lines[0].split()) if lines else type(orig).__name__
    cause = cause.removeprefix("connection failed: ")
    # Drivers do not echo passwords, but a message is cheap to make safe.
    cause = mask_text(cause)
    if password and len(password) >= 4:
        cause = cause.replace(password, "***")
    return cause
