"""Drills: faults a sweep meets on a real cluster, on real local Ray, a real MLflow store and a real SQLite
leaderboard. Each drill breaks something the way it breaks in practice and checks the sweep's way out.

- fix-and-resume: one image of the task is corrupt, so every search trial fails and the cell fails; the image
  is repaired and ``sweep resume`` finishes the cell under its own name.
- second driver refused: a second ``sweep run`` of a name that is running is refused in one line, and the
  first finishes undisturbed.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from presets import tiny_sweep
from alorectl.cli import app

runner = CliRunner()

PRESET = tiny_sweep(methods=["linear"], search={"trials": 1},
                    space={"lr": [0.01], "weight_decay": [0.001], "dropout": [0.0]},
                    train={"epochs": 1, "warmup_epochs": 0})


def work_folder(demo_dir: Path, root: Path) -> tuple[Path, Path]:
    """A work folder with its own copy of the digits task and the demo backbone (the drill breaks the copy),
    and the preset file."""
    work = root / "work"
    (work / "data" / "vtab-1k").mkdir(parents=True)
    work.chmod(0o700)
    shutil.copytree(demo_dir / "vtab-1k" / "digits", work / "data" / "vtab-1k" / "digits")
    shutil.copy(demo_dir / "demo.safetensors", work / "data" / "demo.safetensors")
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(PRESET))
    return work, preset


def cell_status(work: Path, sweep: str) -> list[tuple[str, str]]:
    with sqlite3.connect(work / "leaderboard.db") as conn:
        return conn.execute("SELECT s.status, c.status FROM cell c JOIN sweep s ON s.id = c.sweep_id "
                            "WHERE s.name = ?", (sweep,)).fetchall()


@pytest.mark.slow
def test_fix_and_resume_finishes_the_cell_under_its_own_name(demo_dir, tmp_path) -> None:
    import ray

    work, preset = work_folder(demo_dir, tmp_path)
    task = work / "data" / "vtab-1k" / "digits"
    # Not the first image of a split: the checks before Ray starts decode one image per split, the trial all.
    second = (task / "train800.txt").read_text().splitlines()[1].split()[0]
    image = task / second
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 3])  # a truncated copy, as an interrupted rsync leaves it
    try:
        failed = runner.invoke(app, ["sweep", "run", str(preset), "--workdir", str(work), "--name", "tiny"])
        assert failed.exit_code != 0, failed.output
        assert "every search trial failed" in failed.output
        assert cell_status(work, "tiny") == [("failed", "failed")]

        image.write_bytes(good)  # repaired
        resumed = runner.invoke(app, ["sweep", "resume", "tiny", "--workdir", str(work)])
        assert resumed.exit_code == 0, resumed.output
        assert "done demo/digits/linear" in resumed.output
        assert cell_status(work, "tiny") == [("done", "done")]
        status = runner.invoke(app, ["sweep", "status", "tiny", "--workdir", str(work)])
        assert status.exit_code == 0 and "tiny (done)" in status.output and "0 left" in status.output, status.output
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_second_driver_of_a_running_sweep_is_refused_and_the_first_finishes(demo_dir, tmp_path) -> None:
    work, preset = work_folder(demo_dir, tmp_path)
    argv = ["sweep", "run", str(preset), "--workdir", str(work), "--name", "tiny"]
    first = subprocess.Popen([sys.executable, "-m", "alorectl.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        lock = work / "locks" / "tiny.lock"
        for _ in range(3000):  # until the first driver holds the name (it writes its pid once it does)
            if first.poll() is not None or (lock.is_file() and lock.read_text().strip() == str(first.pid)):
                break
            time.sleep(0.1)
        assert first.poll() is None, "the first driver is still running"
        second = runner.invoke(app, argv)
        assert second.exit_code == 2, second.output
        assert f"error: sweep 'tiny' is already running, pid {first.pid}" in second.stderr
        assert "Traceback" not in second.output
        out, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out
    assert cell_status(work, "tiny") == [("done", "done")]
    trials = sorted(p.name for p in (work / "ray" / "tiny").iterdir() if p.is_dir())
    assert trials == ["demo__digits__linear__final-s42", "demo__digits__linear__search-00"], trials


def test_force_new_replaces_only_that_sweep_and_leaves_nothing_half_done(tmp_path) -> None:
    """``sweep run --force-new``'s replacement: the sweep's rows (cells, trials, results cascade) and its Tune
    folder go; another sweep's rows and folder, and a folder whose name only starts alike, stay."""
    from alorectl import db
    from alorectl.defaults import db_url
    from alorectl.sweep.replace import replace_sweep

    engine = db.connect(db_url(tmp_path))
    try:
        for name in ("tiny", "tiny-2"):
            sweep = db.upsert_sweep(engine, name, preset="p", suite="vtab", status="failed")
            cell = db.upsert_cell(engine, sweep, "demo", "digits", "linear", status="failed")
            db.record_trial(engine, cell, "search-00", protocol="search", status="failed")
            (tmp_path / "ray" / name / "demo__digits__linear__search-00").mkdir(parents=True)
        (tmp_path / "ray" / ".replaced-tiny-2-123").mkdir()  # another sweep's leftover: not ours to remove
        replace_sweep(engine, tmp_path, "tiny")
        assert db.sweep_names(engine) == ["tiny-2"]
        assert [t.trial_key for t in db.sweep_trials(engine, "tiny-2")] == ["search-00"]
    finally:
        engine.dispose()
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == [".replaced-tiny-2-123", "tiny-2"]


def _one_line(argv: list[str]) -> tuple[int, str]:
    """Run a command of a small app built like alorectl's (the same wrapper at the command boundary)."""
    from alorectl.cli.app import App

    tool = App()

    @tool.command("disk")
    def disk() -> None:
        with open("/dev/full", "w") as f:  # the kernel's full disk: every write fails with ENOSPC
            f.write("x")
            f.flush()

    @tool.command("alloc")
    def alloc() -> None:
        import torch

        torch.empty(10**13)  # 40 TB: refused by the allocator at once, as --option rank=100000000 is

    @tool.command("stop")
    def stop() -> None:
        raise KeyboardInterrupt

    result = runner.invoke(tool, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return result.exit_code, lines[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_one_line_naming_it() -> None:
    # The write's error names no file (a flush): the line says what it knows.
    assert _one_line(["disk"]) == (2, "error: disk full; free space")


def test_an_allocation_that_cannot_be_made_is_one_line() -> None:
    code, line = _one_line(["alloc"])
    assert code == 2 and line.startswith("error: out of memory:") and "lower it" in line


def test_ctrl_c_exits_130_in_one_line() -> None:
    assert _one_line(["stop"]) == (130, "error: interrupted")


#: A process that makes the first use of an MLflow store: it signals that it is ready, waits for "go", then
#: creates an experiment (on a new SQLite store: MLflow creates and migrates the database first).
FIRST_USE = """
import pathlib, sys, time
from alorectl.tracking.client import Tracker
folder, name = pathlib.Path(sys.argv[1]), sys.argv[2]
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
Tracker(f"sqlite:///{folder / 'mlflow.db'}").experiment(f"alore/{name}")
print("created", name)
"""


def test_first_uses_of_a_new_mlflow_store_at_once_migrate_it_once(tmp_path) -> None:
    """Two sweeps of different names starting together in a new work folder both make the first use of its
    mlflow.db; MLflow's migration of a new SQLite store is not safe to run twice at once (duplicate columns,
    tables that exist). Three processes released at the same instant all succeed: one migrates, the others wait."""
    names = ("a", "b", "c")
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path), n], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for n in names]
    try:
        for _ in range(6000):  # until every process has imported MLflow and waits
            if all((tmp_path / f"ready-{n}").exists() for n in names) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for name, proc, out in zip(names, procs, outputs):
        assert proc.returncode == 0 and f"created {name}" in out and "Traceback" not in out, out
    from mlflow import MlflowClient

    found = {e.name for e in MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()}
    assert {f"alore/{n}" for n in names} <= found


def test_the_embedded_mlflow_store_commits_without_waiting_for_the_disk(tmp_path) -> None:
    """The SQLite MLflow store the driver writes is in WAL mode (a reader never blocks it), and this process's
    connections to it commit at synchronous NORMAL (no fsync per commit); other SQLite files keep SQLite's
    defaults."""
    import sqlite3

    from sqlalchemy import create_engine, text

    from alorectl.tracking.client import Tracker

    store = tmp_path / "mlflow.db"
    tracker = Tracker(f"sqlite:///{store}", unsynced_store=True)  # as the driver opens it
    run = tracker.create_run(tracker.experiment("alore/t"), "k", "search 0", {"sweep": "t"})
    tracker.complete(run)
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    other = tmp_path / "other.db"
    for path, synchronous in ((store, 1), (other, 2)):  # 1 NORMAL, 2 FULL (SQLite's default)
        engine = create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == synchronous, path
        engine.dispose()


def test_a_trial_run_is_complete_in_the_same_call_as_the_last_of_what_it_holds(tmp_path) -> None:
    """A trial's run is ended first, and the ``alore.complete`` tag goes into the last ``log_batch``: nothing is
    written to the run after the tag (a run without it is redone), also when its metrics need several calls."""
    from mlflow import MlflowClient

    from alorectl.tracking.client import COMPLETE, Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, tmp_path / "artifacts")
    experiment = tracker.experiment("alore/t")
    calls: list[dict] = []
    log_batch = tracker.client.log_batch

    def recording(run_id, metrics=(), params=(), tags=(), **kw):
        calls.append({"metrics": len(metrics), "tags": [t.key for t in tags]})
        return log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)

    tracker.client.log_batch = recording
    for epochs in (10, 400):  # 400 epochs x 3 metrics: more than one batch
        calls.clear()
        run = tracker.create_run(experiment, f"k{epochs}", "search 0", {"sweep": "t"})
        history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 50.0, "val_acc": 40.0} for e in range(1, epochs + 1)]
        tracker.log(run, params={"lr": 0.01}, history=history, fresh=True, complete="FINISHED", end_time=1234)
        got = MlflowClient(uri).get_run(run)
        assert got.info.status == "FINISHED" and got.info.end_time == 1234
        assert got.data.tags[COMPLETE] == "1"
        assert [i for i, c in enumerate(calls) if COMPLETE in c["tags"]] == [len(calls) - 1], calls
        assert sum(c["metrics"] for c in calls) == 3 * epochs
        assert len(MlflowClient(uri).get_metric_history(run, "train_loss")) == epochs
    assert len(calls) > 1


@pytest.mark.slow
def test_two_sweeps_of_different_names_start_together_in_a_new_work_folder(demo_dir, tmp_path) -> None:
    """The issue's drill: `alorectl sweep` twice at once, names a and b, in a work folder with no databases yet.
    Both finish (whichever reaches MLflow's first migration second waits for it), no traceback. How close the
    two first uses of mlflow.db come depends on Ray's start-up; the test above releases them at one instant."""
    work, preset = work_folder(demo_dir, tmp_path)
    env = {**os.environ, "COLUMNS": "200"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "alorectl.cli", "sweep", "run", str(preset), "--workdir",
                                     str(work), "--name", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env) for name in ("a", "b")}
    try:
        outputs = {name: p.communicate(timeout=1200)[0] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for name, p in procs.items():
        assert p.returncode == 0 and "Traceback" not in outputs[name], outputs[name]
        assert cell_status(work, name) == [("done", "done")]
    from mlflow import MlflowClient

    names = {e.name for e in MlflowClient(f"sqlite:///{work / 'mlflow.db'}").search_experiments()}
    assert {"alore/a", "alore/b"} <= names, names
