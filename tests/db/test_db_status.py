"""sweep_status(): cells per status and the best so far."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import Engine

from alorectl.db import SweepNotFoundError, sweep_names, sweep_status
from alorectl.db.writes import record_result, record_trial, set_cell_status, upsert_cell, upsert_sweep


def test_counts_and_best_so_far(engine: Engine) -> None:
    sweep_id = upsert_sweep(engine, "vtab-1", preset="vtab", suite="vtab", status="running")
    done = upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore")
    running = upsert_cell(engine, sweep_id, "vit_b", "dtd", "alore")
    upsert_cell(engine, sweep_id, "vit_b", "cifar", "lora")
    failed = upsert_cell(engine, sweep_id, "vit_b", "dtd", "lora")

    # cifar/alore: searched, picked, finished.
    record_trial(engine, done, "s1", protocol="search", status="done", val_acc=70.0, config={"lr": 1})
    record_trial(engine, done, "s2", protocol="search", status="done", val_acc=72.0, config={"lr": 2})
    record_trial(engine, done, "f0", protocol="final", seed=0, status="done", test_acc=71.0)
    set_cell_status(engine, done, "done", best_config={"lr": 2}, best_val_acc=72.0, seeds=[0], epochs=100)
    record_result(engine, sweep_id=sweep_id, backbone="vit_b", task="cifar", method="alore", suite="vtab",
                  test_acc_mean=71.0, seeds=[0])  # fmt: skip
    # dtd/alore: mid-search; the best so far comes from its trials.
    set_cell_status(engine, running, "running")
    record_trial(engine, running, "s1", protocol="search", status="done", val_acc=55.0, config={"lr": 1})
    record_trial(engine, running, "s2", protocol="search", status="pruned", val_acc=58.5, config={"lr": 3})
    record_trial(engine, running, "s3", protocol="search", status="running", config={"lr": 4})
    set_cell_status(engine, failed, "failed")

    status = sweep_status(engine, "vtab-1")
    assert (status.name, status.status, status.preset, status.suite) == ("vtab-1", "running", "vtab", "vtab")
    assert status.counts == {"pending": 1, "running": 1, "done": 1, "failed": 1}
    assert status.total == 4
    cells = {(c.task, c.method): c for c in status.cells}
    c = cells["cifar", "alore"]
    assert (c.n_trials, c.trials_done, c.best_val_acc, c.best_config, c.test_acc_mean) == (3, 3, 72.0, {"lr": 2}, 71.0)
    assert (c.seeds, c.epochs) == ([0], 100)
    c = cells["dtd", "alore"]
    assert (c.n_trials, c.trials_done, c.best_val_acc, c.best_config, c.test_acc_mean) == (3, 1, 58.5, {"lr": 3}, None)
    c = cells["cifar", "lora"]
    assert (c.status, c.n_trials, c.best_val_acc, c.best_config) == ("pending", 0, None, None)
    assert status.best is cells["cifar", "alore"]
    data = json.loads(json.dumps(status.to_dict()))
    assert data["counts"]["done"] == 1 and data["total"] == 4 and len(data["cells"]) == 4


def test_best_before_any_test_result_is_the_best_val(engine: Engine) -> None:
    sweep_id = upsert_sweep(engine, "s")
    a = upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore")
    b = upsert_cell(engine, sweep_id, "vit_b", "dtd", "alore")
    record_trial(engine, a, "t", protocol="search", val_acc=40.0)
    record_trial(engine, b, "t", protocol="search", val_acc=60.0)
    assert sweep_status(engine, "s").best.task == "dtd"


def test_unknown_sweep_names_the_known_ones(engine: Engine) -> None:
    upsert_sweep(engine, "b-sweep")
    upsert_sweep(engine, "a-sweep")
    assert sweep_names(engine) == ["a-sweep", "b-sweep"]
    with pytest.raises(SweepNotFoundError, match="unknown sweep 'nope'; valid choices: a-sweep, b-sweep"):
        sweep_status(engine, "nope")


def test_unknown_sweep_in_an_empty_database(engine: Engine) -> None:
    with pytest.raises(SweepNotFoundError, match="no sweeps recorded yet"):
        sweep_status(engine, "nope")
