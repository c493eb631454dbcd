"""Idempotent writes: the same write twice leaves one row holding the latest values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from alorectl.db import sessions
from alorectl.db.models import Cell, Result, Sweep, Trial
from alorectl.db.writes import (
    record_result,
    record_trial,
    set_cell_status,
    set_sweep_status,
    upsert_cell,
    upsert_sweep,
)


def _count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model)).scalar_one()


def _row(engine: Engine, model: type, **where):
    with engine.connect() as conn:
        stmt = select(model.__table__).filter_by(**where)
        return conn.execute(stmt).mappings().one()


@pytest.fixture
def cell(engine: Engine) -> tuple[int, int]:
    sweep_id = upsert_sweep(engine, "vtab-1", preset="vtab", suite="vtab", status="running")
    return sweep_id, upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore")


def test_sweep_upsert_is_idempotent(engine: Engine) -> None:
    first = upsert_sweep(engine, "vtab-1", preset="vtab", suite="vtab", config={"epochs": 100}, status="running")
    again = upsert_sweep(engine, "vtab-1", config={"epochs": 50}, status="interrupted")
    assert first == again and _count(engine, Sweep) == 1
    row = _row(engine, Sweep, name="vtab-1")
    # Given values are updated, omitted ones (preset, suite) kept.
    assert (row["preset"], row["suite"], row["config"], row["status"]) == (
        "vtab",
        "vtab",
        {"epochs": 50},
        "interrupted",
    )
    assert row["updated_at"] >= row["created_at"]
    set_sweep_status(engine, first, "done")
    assert _row(engine, Sweep, name="vtab-1")["status"] == "done"


def test_resuming_keeps_cells_that_are_done(engine: Engine, cell: tuple[int, int]) -> None:
    sweep_id, cell_id = cell
    set_cell_status(
        engine, cell_id, "done", best_config={"lr": 1e-3, "rank": 8}, best_val_acc=71.5, seeds=[0, 1, 2], epochs=100
    )
    # The resumed sweep plans the same cells again.
    assert upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore") == cell_id
    other = upsert_cell(engine, sweep_id, "vit_b", "dtd", "alore")
    assert other != cell_id and _count(engine, Cell) == 2
    row = _row(engine, Cell, id=cell_id)
    assert row["status"] == "done"
    assert (row["best_config"], row["best_val_acc"], row["seeds"], row["epochs"]) == (
        {"lr": 1e-3, "rank": 8}, 71.5, [0, 1, 2], 100,
    )  # fmt: skip
    assert _row(engine, Cell, id=other)["status"] == "pending"
    # An explicit status does overwrite.
    upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore", status="running")
    assert _row(engine, Cell, id=cell_id)["status"] == "running"


def test_a_retried_trial_is_one_row(engine: Engine, cell: tuple[int, int]) -> None:
    _, cell_id = cell
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    first = record_trial(
        engine, cell_id, "trial_0001", protocol="search", config={"lr": 1e-3}, node_id="node-a",
        started_at=start, epochs_done=3, val_acc=40.0,
    )  # fmt: skip
    # The trial fails, Tune retries it on another node, it finishes.
    record_trial(engine, cell_id, "trial_0001", protocol="search", status="failed")
    retry = record_trial(
        engine, cell_id, "trial_0001", protocol="search", status="running", node_id="node-b", epochs_done=0
    )
    done = record_trial(
        engine, cell_id, "trial_0001", protocol="search", status="done", val_acc=72.25, epochs_done=100,
        finished_at=start + timedelta(hours=1), mlflow_run_id="run-1",
    )  # fmt: skip
    assert first == retry == done and _count(engine, Trial) == 1
    row = _row(engine, Trial, id=first)
    assert row["status"] == "done" and row["val_acc"] == 72.25 and row["epochs_done"] == 100
    assert row["node_id"] == "node-b" and row["mlflow_run_id"] == "run-1"
    assert row["config"] == {"lr": 1e-3}  # not repeated by later calls, kept
    assert row["started_at"].replace(tzinfo=UTC) == start
    assert row["test_acc"] is None and row["seed"] is None


def test_trials_of_a_cell_are_keyed_by_tune_id(engine: Engine, cell: tuple[int, int]) -> None:
    sweep_id, cell_id = cell
    other_cell = upsert_cell(engine, sweep_id, "vit_b", "dtd", "alore")
    for key in ("a", "b", "a"):
        record_trial(engine, cell_id, key, protocol="search")
    record_trial(engine, other_cell, "a", protocol="final", seed=0, test_acc=60.0)  # same key, other cell
    assert _count(engine, Trial) == 3


def test_a_rewritten_result_is_one_row(engine: Engine, cell: tuple[int, int]) -> None:
    sweep_id, _ = cell
    kwargs = dict(sweep_id=sweep_id, backbone="vit_b", task="cifar", method="alore", suite="vtab")
    first = record_result(
        engine, **kwargs, test_acc_mean=70.0, test_acc_std=0.5, seeds=[0, 1, 2], val_acc=71.0,
        trainable_params=150_000, config={"lr": 1e-3}, epochs=100, mlflow_run_id="run-1", artifact_uri="file:///a",
    )  # fmt: skip
    again = record_result(engine, **kwargs, test_acc_mean=70.4, test_acc_std=0.3, seeds=[0, 1, 2, 3])
    assert first == again and _count(engine, Result) == 1
    row = _row(engine, Result, id=first)
    assert (row["test_acc_mean"], row["test_acc_std"], row["n_seeds"], row["seeds"]) == (70.4, 0.3, 4, [0, 1, 2, 3])
    assert (row["val_acc"], row["trainable_params"], row["config"], row["epochs"]) == (71.0, 150_000, {"lr": 1e-3}, 100)
    assert row["updated_at"] >= row["created_at"]
    # Another sweep's result for the same cell is its own row.
    other_sweep = upsert_sweep(engine, "vtab-2")
    record_result(engine, **{**kwargs, "sweep_id": other_sweep}, test_acc_mean=69.0, seeds=[0])
    assert _count(engine, Result) == 2


def test_numpy_like_values_are_stored_as_plain_json(engine: Engine, cell: tuple[int, int]) -> None:
    class Scalar:  # what numpy.float32(0.001) looks like to db/: it has .item()
        def item(self) -> float:
            return 0.001

    _, cell_id = cell
    record_trial(engine, cell_id, "t", protocol="search", config={"lr": Scalar(), "betas": (0.9, 0.999)})
    assert _row(engine, Trial, trial_key="t")["config"] == {"lr": 0.001, "betas": [0.9, 0.999]}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e, c: upsert_sweep(e, "x", status="finished"), "unknown sweep status 'finished'"),
        (lambda e, c: set_cell_status(e, c, "complete"), "unknown cell status 'complete'.*pending"),
        (lambda e, c: record_trial(e, c, "t", protocol="eval"), "unknown trial protocol 'eval'.*search, final"),
        (lambda e, c: record_trial(e, c, "t", protocol="search", status="TERMINATED"), "unknown trial status"),
    ],
)
def test_bad_statuses_are_refused(engine: Engine, cell: tuple[int, int], call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(engine, cell[1])


def test_unknown_cell_id(engine: Engine) -> None:
    with pytest.raises(LookupError, match="no cell with id 12345"):
        set_cell_status(engine, 12345, "done")


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with pytest.raises(IntegrityError):
        record_trial(engine, 12345, "t", protocol="search")


def test_writes_join_the_callers_transaction(engine: Engine) -> None:
    # With a Session (or Connection) the caller decides: rollback undoes all.
    make = sessions(engine)
    with make() as session:
        sweep_id = upsert_sweep(session, "tx")
        upsert_cell(session, sweep_id, "vit_b", "cifar", "alore")
        session.rollback()
    assert _count(engine, Sweep) == 0
    with make() as session, session.begin():
        sweep_id = upsert_sweep(session, "tx")
        upsert_cell(session, sweep_id, "vit_b", "cifar", "alore")
    with engine.begin() as conn:
        record_trial(conn, upsert_cell(conn, sweep_id, "vit_b", "cifar", "alore"), "t", protocol="search")
    assert (_count(engine, Sweep), _count(engine, Cell), _count(engine, Trial)) == (1, 1, 1)
    # The ORM view of the same rows.
    with make() as session:
        sweep = session.scalars(select(Sweep).where(Sweep.name == "tx")).one()
        assert [c.task for c in sweep.cells] == ["cifar"] and len(sweep.cells[0].trials) == 1


def test_deleting_a_sweep_cascades(engine: Engine, cell: tuple[int, int]) -> None:
    sweep_id, cell_id = cell
    record_trial(engine, cell_id, "t", protocol="search")
    record_result(engine, sweep_id=sweep_id, backbone="vit_b", task="cifar", method="alore", suite="vtab",
                  test_acc_mean=1.0, seeds=[0])  # fmt: skip
    with sessions(engine)() as session, session.begin():
        session.delete(session.get(Sweep, sweep_id))
    assert [_count(engine, m) for m in (Sweep, Cell, Trial, Result)] == [0, 0, 0, 0]
