"""Fault 4: the MLflow server goes away mid-sweep. Trials go on, results still reach the database, the
missing logging is reported and `sweep resume` logs it once the server is back, without duplicates."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from orchestrator import preset as presets
from orchestrator.cli import app
from orchestrator.sweep import Hooks, Settings, run_sweep

runner = CliRunner()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            MlflowClient(f"http://127.0.0.1:{port}").search_experiments()
            return proc
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited") from None
            time.sleep(1)
    proc.kill()
    raise RuntimeError("mlflow server did not start")


def stop(proc: subprocess.Popen) -> None:
    import os
    import signal

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
    server = start_server(store, port)
    uri = f"http://127.0.0.1:{port}"
    work = tmp_path / "work"
    warnings: list[str] = []

    def kill_after_first(cell, result) -> None:
        nonlocal server
        if server.poll() is None:
            stop(server)

    settings = Settings.embedded("outage", work, uri, None)
    try:
        run_sweep(presets.load(str(tiny)), settings, Hooks(on_cell_done=kill_after_first,
                                                           on_warning=warnings.append))
    finally:
        ray.shutdown()
        stop(server)
    # Both cells reached the database although the second could not be logged.
    with sqlite3.connect(work / "leaderboard.db") as conn:
        results = conn.execute("SELECT method, mlflow_run_id FROM result ORDER BY method").fetchall()
    assert [m for m, _ in results] == ["alore", "linear"]
    missing = [m for m, run in results if run is None]
    assert missing == ["linear"], results
    assert any("MLflow logging of demo__digits__linear failed" in w and "sweep resume outage" in w for w in warnings)
    assert (work / "mlflow-pending-outage.json").is_file()

    # The server comes back (same store): resume logs what was missing, once.
    server = start_server(store, port)
    try:
        result = runner.invoke(app, ["sweep", "resume", "outage", "--workdir", str(work), "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("alore/outage")
        runs = client.search_runs([exp.experiment_id], max_results=100)
        cells = [r for r in runs if r.data.tags.get("method") and "mlflow.parentRunId" not in r.data.tags]
        assert sorted(r.data.tags["method"] for r in cells) == ["alore", "linear"], "one parent run per cell"
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(children) == 4 and len({r.data.tags["alore.key"] for r in children}) == 4
    finally:
        ray.shutdown()
        stop(server)
    assert not (work / "mlflow-pending-outage.json").exists()
    with sqlite3.connect(work / "leaderboard.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM result WHERE mlflow_run_id IS NULL").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM trial").fetchone()[0] == 4
