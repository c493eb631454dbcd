"""Migrations: upgrade to head, models == migrations ("alembic check"), round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, event, inspect, text

from alorectl.db import SchemaVersionError, connect, leaderboard, sweep_names
from alorectl.db.migrate import alembic_config, current_revision, head_revision, upgrade
from alorectl.db.models import Base
from alorectl.db.writes import upsert_sweep

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"sweep", "cell", "trial", "result", "alembic_version"}


def test_connect_upgrades_an_empty_database_to_head(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_models_match_migrations(engine: Engine) -> None:
    # What `alembic check` does: autogenerate against the upgraded database
    # must find nothing to do, or a model change lacks its migration.
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        command.check(alembic_config(conn))


def test_connect_twice_is_a_no_op(db_url: str) -> None:
    for _ in range(2):
        eng = connect(db_url)
        with eng.connect() as conn:
            assert current_revision(conn) == head_revision()
        eng.dispose()


def test_downgrade_to_base_and_upgrade_again(engine: Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert upgrade(engine) == head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_a_database_newer_than_the_code_is_refused(engine: Engine, db_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=r"9999.*does not know"):
        connect(db_url)


def test_naming_convention_names_every_constraint(engine: Engine) -> None:
    insp = inspect(engine)
    assert insp.get_pk_constraint("trial")["name"] in ("pk_trial", None)  # SQLite does not keep pk names
    uniques = {uc["name"] for uc in insp.get_unique_constraints("result")}
    assert "uq_result_backbone_task_method_sweep_id" in uniques


def test_migration_sql_renders_offline(tmp_path) -> None:
    # `--sql` mode works without a database (for DBAs who apply DDL by hand).
    cfg = alembic_config(url=f"sqlite:///{tmp_path / 'unused.db'}")
    cfg.print_stdout = lambda *args, **kw: None  # type: ignore[method-assign]
    command.upgrade(cfg, "head", sql=True)
    assert not (tmp_path / "unused.db").exists()


def test_raw_inserts_get_server_default_timestamps(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sweep (name, config, status) VALUES ('raw', '{}', 'pending')"))
        created = conn.execute(text("SELECT created_at FROM sweep WHERE name = 'raw'")).scalar_one()
    assert created is not None


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    eng = connect(f"sqlite:///{tmp_path / 'wal.db'}")
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 10_000
    eng.dispose()


def test_sqlite_readers_do_not_wait_for_a_writer(tmp_path) -> None:
    # Writers BEGIN IMMEDIATE (they queue on the busy timeout instead of
    # failing); readers stay deferred, so with WAL `alorectl leaderboard`
    # answers while the sweep driver holds the write lock.
    url = f"sqlite:///{tmp_path / 'rw.db'}"
    eng = connect(url)
    upsert_sweep(eng, "committed")
    reader = connect(url)
    # No patience at all: a reader that had to wait for the writer's lock fails at once ("database is locked").
    event.listen(reader, "connect", lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout = 0"))
    with eng.begin() as writer:
        upsert_sweep(writer, "uncommitted")
        assert sweep_names(reader) == ["committed"]
        assert leaderboard(reader, "vit_b").rows == ()
    assert sweep_names(reader) == ["committed", "uncommitted"]
    reader.dispose()
    eng.dispose()


def test_db_imports_neither_torch_nor_ray_nor_alore() -> None:
    code = "import sys, db; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'alore'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
