"""Fault 4: the MLflow server goes away mid-sweep. Trials go on, results still reach the database, the
missing logging is reported and `sweep resume` logs it once the server is back, without duplicates."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from alorectl.sweep import preset as presets
from alorectl.cli import app
from alorectl.sweep.driver import Hooks, Settings, run_sweep
from ui_utils import free_port, start_mlflow_server

pytestmark = pytest.mark.slow  # sweeps or servers end to end: not in `make check`

runner = CliRunner()
SECRET = "S3cretPw"


def stop(proc: subprocess.Popen) -> None:
    """SIGKILL: the server goes away as in an outage, no shutdown of its own."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture
def tiny(tmp_path, demo_dir) -> Path:
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump({
        "suite": "vtab", "data_root": str(demo_dir / "vtab-1k"), "weights": {"demo": str(demo_dir / "demo.safetensors")},
        "backbones": ["demo"], "tasks": ["digits"], "methods": ["alore", "linear"],
        "search": {"algorithm": "optuna", "trials": 1}, "space": {"lr": [0.01], "weight_decay": [0.001]},
        "train": {"epochs": 1, "warmup_epochs": 0}, "resources": {"cpus_per_trial": 1},
    }))
    return path


def test_mlflow_outage_mid_sweep(tmp_path, tiny) -> None:
    import ray

    store, port = tmp_path / "server.db", free_port()
    server = start_mlflow_server(store, port)
    # Credentials in the URI (an MLflow server without auth ignores them): they must never be shown or stored.
    uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
    work = tmp_path / "work"
    warnings: list[str] = []

    def kill_after_first(cell, result) -> None:
        if server.poll() is None:
            stop(server)

    settings = Settings.embedded("outage", work, uri, None)
    try:
        run_sweep(presets.load(str(tiny)), settings, Hooks(on_cell_done=kill_after_first,
                                                           on_warning=warnings.append))
    finally:
        ray.shutdown()
        stop(server)
    # Both cells reached the database although MLflow went away under them.
    with sqlite3.connect(work / "leaderboard.db") as conn:
        results = conn.execute("SELECT method, mlflow_run_id FROM result ORDER BY method").fetchall()
        unlogged = conn.execute("SELECT COUNT(*) FROM trial WHERE mlflow_run_id IS NULL").fetchone()[0]
    assert [m for m, _ in results] == ["alore", "linear"]
    missing = [m for m, run in results if run is None]
    assert missing, results
    assert any("MLflow logging of demo__digits__" in w and "sweep resume outage" in w for w in warnings), warnings

    # The server comes back (same store): resume logs what was missing, once.
    server = start_mlflow_server(store, port)
    try:
        result = runner.invoke(app, ["sweep", "resume", "outage", "--workdir", str(work), "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("alore/outage")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        cells = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert sorted(r.data.tags["method"] for r in cells) == ["alore", "linear"], "one parent run per cell"
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 4 and len({r.data.tags["alore.key"] for r in children}) == 4
        assert all(r.data.tags.get("alore.complete") == "1" for r in runs)
        assert SECRET not in result.output
        for r in runs:
            assert SECRET not in repr(r.data.params) + repr(r.data.tags)
    finally:
        ray.shutdown()
        stop(server)
    assert SECRET not in " ".join(warnings)
    for path in [*work.rglob("*"), store]:  # the databases, Tune's files, logs: nothing holds the password
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with sqlite3.connect(work / "leaderboard.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM result WHERE mlflow_run_id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM trial WHERE mlflow_run_id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM trial").fetchone()[0] == 4
    assert unlogged >= 1


def test_a_run_cut_short_after_create_run_is_redone_not_completed_empty(tmp_path, tiny, monkeypatch) -> None:
    """MLflow fails right after a trial's run is created, before its params and history: the replay must
    log that run whole (params, one val_acc step per epoch), never mark the empty run finished."""
    import ray

    from alorectl.tracking.client import Tracker, TrackingUnavailable

    work = tmp_path / "work"
    real_log = Tracker.log
    failed: list[str] = []

    def flaky_log(self, run_id, params=None, **kwargs):
        if params and not failed:  # the first run's params: the call right after create_run
            failed.append(run_id)
            raise TrackingUnavailable("injected: connection reset")
        return real_log(self, run_id, params=params, **kwargs)

    monkeypatch.setattr(Tracker, "log", flaky_log)
    monkeypatch.setattr("alorectl.tracking.observer.RETRY_AFTER_S", 0.0)
    settings = Settings.embedded("cut", work)
    try:
        run_sweep(presets.load(str(tiny)), settings, Hooks())
    finally:
        ray.shutdown()
    assert failed, "the failure was injected"
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    cut = client.get_run(failed[0])
    assert cut.data.tags.get("alore.complete") is None and not cut.data.params, "cut short as intended"

    monkeypatch.setattr(Tracker, "log", real_log)
    try:
        result = runner.invoke(app, ["sweep", "resume", "cut", "--workdir", str(work)])
        assert result.exit_code == 0, result.output
    finally:
        ray.shutdown()
    exp = client.get_experiment_by_name("alore/cut")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and len({r.data.tags["alore.key"] for r in children}) == 4
    for r in children:
        assert r.data.tags.get("alore.complete") == "1" and r.info.status == "FINISHED"
        assert {"lr", "weight_decay", "seed"} <= set(r.data.params), r.info.run_name
        if r.data.tags["protocol"] == "search":
            assert [m.step for m in client.get_metric_history(r.info.run_id, "val_acc")] == [1]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    for r in parents:
        assert r.data.tags.get("alore.complete") == "1"
        assert {a.path for a in client.list_artifacts(r.info.run_id, "final")} >= {"final/adapter.safetensors"}


def test_a_trials_record_is_split_into_log_batch_calls_within_mlflows_limits() -> None:
    """One call for a small run; larger ones never exceed 100 params, 100 tags or 1,000 entities a call, and
    every param, metric and tag is sent once, in order."""
    from alorectl.tracking.client import batches

    assert len(batches(["p"] * 5, ["m"] * 300, ["t"] * 3)) == 1
    params, metrics, tags = [f"p{i}" for i in range(250)], [f"m{i}" for i in range(2500)], [f"t{i}" for i in range(120)]
    calls = batches(params, metrics, tags)
    for p, m, t in calls:
        assert len(p) <= 100 and len(t) <= 100 and len(p) + len(m) + len(t) <= 1000
    assert [x for c in calls for x in c[0]] == params
    assert [x for c in calls for x in c[1]] == metrics
    assert [x for c in calls for x in c[2]] == tags


def test_after_a_restart_mlflows_catch_up_runs_beside_the_trials_not_before_them(tmp_path, tiny) -> None:
    """What an earlier run recorded but did not log is queued for the tracking thread: the catch-up returns (and
    Tune starts the restored trials) while that thread is still busy; once it has worked through the queue, every
    trial and cell has its one complete run."""
    import threading

    import ray
    from mlflow import MlflowClient

    from alorectl import db
    from alorectl.sweep.driver import Driver, make_plan
    from alorectl.sweep.record import Recorder
    from alorectl.tracking.client import Tracker
    from alorectl.tracking.observer import Track

    work, preset = tmp_path / "work", presets.load(str(tiny))
    try:
        run_sweep(preset, Settings.embedded("later", work, f"sqlite:///{tmp_path / 'first.db'}", None))
    finally:
        ray.shutdown()
    # The state a driver killed before its MLflow calls leaves: recorded in the database, not in this store.
    with sqlite3.connect(work / "leaderboard.db") as conn:
        conn.execute("UPDATE trial SET mlflow_run_id = NULL")
        conn.execute("UPDATE result SET mlflow_run_id = NULL")
    uri = f"sqlite:///{tmp_path / 'second.db'}"
    settings = Settings.embedded("later", work, uri, None)
    plan, engine = make_plan(preset, settings), db.connect(settings.db_url)
    track = Track(Tracker(uri, tmp_path / "artifacts", unsynced_store=True), plan, warn=pytest.fail, workdir=work)
    driver = Driver(plan, settings, Recorder(engine, db.upsert_sweep(engine, "later"), plan), track, engine, Hooks())
    busy = threading.Event()
    try:
        driver.later.put(lambda: busy.wait(120))  # the tracking thread is still busy with something else
        assert driver.catch_up(before_trials=True) == 6  # 4 trials and 2 cells queued
        client = MlflowClient(uri)
        assert client.get_experiment_by_name("alore/later") is None, "the catch-up logged on the caller's thread"
        busy.set()
        driver.later.drain()
        runs = client.search_runs([client.get_experiment_by_name("alore/later").experiment_id], max_results=100)
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) - len(children) == 2, "one parent run per cell"
        assert len(children) == 4 and len({r.data.tags["alore.key"] for r in children}) == 4, "one run per trial"
        assert all(r.data.tags.get("alore.complete") == "1" for r in runs)
    finally:
        busy.set()
        driver.later.close()
        track.close()
        engine.dispose()
    with sqlite3.connect(work / "leaderboard.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM trial WHERE mlflow_run_id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM result WHERE mlflow_run_id IS NULL").fetchone()[0] == 0
