"""Reading without writing: open_existing() and the lookups export and leaderboard use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from alorectl.db import (
    DatabaseNotFoundError,
    SchemaVersionError,
    SweepNotFoundError,
    UnknownResultError,
    connect,
    find_result,
    open_existing,
    result_backbones,
    result_suites,
    result_tasks,
)
from alorectl.db.writes import record_result, upsert_sweep


def _result(engine: Engine, sweep: str, method: str, *, test: float, val: float | None, task: str = "cifar",
            backbone: str = "vit_b", suite: str = "vtab") -> None:
    sweep_id = upsert_sweep(engine, sweep, suite=suite)
    record_result(engine, sweep_id=sweep_id, backbone=backbone, task=task, method=method, suite=suite,
                  test_acc_mean=test, val_acc=val, seeds=[0], artifact_uri=f"/runs/{sweep}/{method}")


# -- open_existing -------------------------------------------------------------


def test_open_existing_creates_nothing(db_url: str, tmp_path: Path) -> None:
    # SQLite: the file (and its folder) does not exist; PostgreSQL: an empty database.
    with pytest.raises(DatabaseNotFoundError, match="no alore database at") as info:
        open_existing(db_url)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "store").exists(), "a reader must not leave a folder or file behind"
    with pytest.raises(DatabaseNotFoundError):
        connect(db_url, create=False)
    assert not (tmp_path / "store").exists()


def test_an_sqlite_file_without_alore_tables_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    sqlite3.connect(path).close()  # an empty SQLite file
    with pytest.raises(DatabaseNotFoundError, match="holds no alore tables yet"):
        open_existing(f"sqlite:///{path}")


def test_open_existing_reads_and_cannot_write(db_url: str) -> None:
    writer = connect(db_url)
    _result(writer, "s", "alore", test=70.0, val=71.0)
    writer.dispose()
    reader = open_existing(db_url)
    assert find_result(reader, "vit_b", "cifar", "alore").test_acc_mean == 70.0
    with pytest.raises(DBAPIError, match="(?i)read.?only"), reader.begin() as conn:
        conn.execute(text("UPDATE result SET test_acc_mean = 0"))
    reader.dispose()


def test_open_existing_checks_the_schema_version_without_migrating(engine: Engine, db_url: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match=r"9999.*does not know"):
        open_existing(db_url)
    check = connect(db_url, migrate=False)
    with check.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "9999"
    check.dispose()


def test_open_existing_keeps_an_sqlite_file_whose_path_needs_quoting(tmp_path: Path) -> None:
    path = tmp_path / "a b%20c?#" / "alore.db"  # a bare path: a URL would read '?' as its query
    connect(str(path)).dispose()
    reader = open_existing(str(path))
    assert result_backbones(reader) == []
    reader.dispose()
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["alore.db"]


# -- find_result ---------------------------------------------------------------


def test_the_newest_row_wins_across_sweeps_unless_a_sweep_is_named(engine: Engine) -> None:
    _result(engine, "old", "alore", test=75.0, val=76.0)
    _result(engine, "new", "alore", test=71.0, val=72.0)
    assert find_result(engine, "vit_b", "cifar", "alore").test_acc_mean == 71.0
    assert find_result(engine, "vit_b", "cifar", "alore", sweep="old").test_acc_mean == 75.0
    with pytest.raises(SweepNotFoundError, match="unknown sweep 'nope'; valid choices: new, old"):
        find_result(engine, "vit_b", "cifar", "alore", sweep="nope")


def test_best_is_chosen_by_val_accuracy_never_test(engine: Engine) -> None:
    _result(engine, "s1", "lora", test=99.0, val=90.0)  # superseded: lora's newest row is below
    _result(engine, "s1", "alore", test=60.0, val=80.0)
    _result(engine, "s2", "lora", test=95.0, val=70.0)
    _result(engine, "s2", "vpt", test=97.0, val=None)  # no val: cannot be chosen
    best = find_result(engine, "vit_b", "cifar", "best")
    assert (best.method, best.val_acc, best.test_acc_mean) == ("alore", 80.0, 60.0)


def test_best_without_any_val_accuracy_asks_for_a_method(engine: Engine) -> None:
    _result(engine, "s", "vpt", test=97.0, val=None)
    with pytest.raises(UnknownResultError, match="no result of vit_b/cifar has a val accuracy.*vit_b/cifar/vpt"):
        find_result(engine, "vit_b", "cifar", "best")


def test_an_unknown_result_names_the_valid_combinations(engine: Engine) -> None:
    with pytest.raises(UnknownResultError, match=r"valid choices: \(no results recorded yet"):
        find_result(engine, "vit_b", "cifar", "alore")
    _result(engine, "s", "alore", test=70.0, val=71.0)
    _result(engine, "s", "lora", test=70.0, val=71.0, task="dtd")
    with pytest.raises(UnknownResultError) as info:
        find_result(engine, "vit_b", "cifar", "lora")
    assert str(info.value) == ("unknown result 'vit_b/cifar/lora' (backbone/task/method); "
                               "valid choices: vit_b/cifar/alore, vit_b/dtd/lora")


def test_the_row_is_detached_and_complete(engine: Engine) -> None:
    _result(engine, "s", "alore", test=70.0, val=71.0)
    row = find_result(engine, "vit_b", "cifar", "alore")
    assert inspect(row).detached
    assert (row.artifact_uri, row.seeds, row.suite, row.config) == ("/runs/s/alore", [0], "vtab", {})


def test_result_backbones_tasks_and_suites(engine: Engine) -> None:
    assert result_backbones(engine) == []
    _result(engine, "a", "alore", test=70.0, val=71.0)
    _result(engine, "a", "alore", test=70.0, val=71.0, task="dtd")
    _result(engine, "b", "alore", test=80.0, val=81.0, backbone="vit_l")
    _result(engine, "c", "alore", test=88.0, val=89.0, task="cub", suite="fgvc")
    assert result_backbones(engine) == ["vit_b", "vit_l"]
    assert result_backbones(engine, suite="fgvc") == ["vit_b"]
    assert result_tasks(engine, "vit_b") == ["cifar", "cub", "dtd"]
    assert result_tasks(engine, "vit_b", suite="vtab") == ["cifar", "dtd"]
    assert result_suites(engine, "vit_b") == ["fgvc", "vtab"] and result_suites(engine, "nope") == []
