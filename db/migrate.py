"""Alembic, configured in code: the migrations ship inside this package.

Like MLflow and Optuna, alore upgrades its schema itself when it opens a
database (:func:`db.session.connect` calls :func:`upgrade`), so there is no
``alembic.ini`` to find at run time and a user never runs Alembic by hand.

Developers change the schema by editing :mod:`db.models`, then::

    python -m alorectl.db revision -m "add foo to result"   # autogenerate
    python -m alorectl.db check                              # models == migrations

and review the new file in ``db/migrations/versions``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from alorectl.db.errors import SchemaVersionError
from alorectl.db.urls import mask_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

# Any fixed 64-bit number: every alore process that upgrades a PostgreSQL
# database takes this transaction-level advisory lock first, so concurrent
# `connect()` calls (eight sweep drivers starting at once) run the migration
# exactly once and the others wait, then find the schema at head.
_PG_MIGRATION_LOCK = 0x616C6F7265_0001  # "alore" + 1


# Alembic's `context`/`op` are module-level proxies: two threads of one
# process must not run migrations at the same time (processes may).
_ALEMBIC_GLOBALS = threading.Lock()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic ``Config`` for the shipped migrations.

    ``connection``: run on this connection (and inside its transaction);
    ``url``: otherwise env.py opens its own engine (developer commands only).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escapes
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this version of alore ships."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "db/migrations/versions is empty"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at, ``None`` for an empty database."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Upgrade the database to ``revision`` (default: head); returns the new revision.

    Safe to call from several processes at once: on PostgreSQL the whole
    upgrade runs in one transaction (DDL is transactional there) under an
    advisory lock; on SQLite :func:`db.session.connect` makes every
    transaction ``BEGIN IMMEDIATE``, which takes the database's write lock
    before Alembic reads the current revision.
    """
    script = ScriptDirectory.from_config(alembic_config())
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        current = MigrationContext.configure(conn).get_current_heads()
        try:
            script.get_revisions(current)
        except (CommandError, RevisionError):
            raise SchemaVersionError(
                f"database {mask_url(engine.url)} is at schema revision {', '.join(current)}, "
                f"which this version of alore does not know (its newest is {head_revision()}); "
                "upgrade alore or point --db at another database"
            ) from None
        if revision == "head" and tuple(current) == (script.get_current_head(),):
            return current[0]  # the common case: nothing to do, skip loading env.py
        with _ALEMBIC_GLOBALS:
            command.upgrade(alembic_config(conn), revision)
        return current_revision(conn)


def main(argv: list[str] | None = None) -> None:
    """Developer commands: ``revision -m MSG`` (autogenerate) and ``check``."""
    parser = argparse.ArgumentParser(prog="python -m db", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="autogenerate a revision from db.models")
    rev.add_argument("-m", "--message", required=True)
    sub.add_parser("check", help="fail when db.models and the migrations differ")
    args = parser.parse_args(argv)

    # Compare against a scratch SQLite database upgraded to head, so the
    # developer needs no server; check PostgreSQL through the test suite.
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'scratch.db'}"
        command.upgrade(alembic_config(url=url), "head")
        if args.cmd == "revision":
            # Sequential ids (0001, 0002, ...) read better than random hex.
            n = len(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))
            command.revision(alembic_config(url=url), message=args.message, autogenerate=True, rev_id=f"{n + 1:04d}")
        else:
            command.check(alembic_config(url=url))
