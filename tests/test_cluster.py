"""Issue 5: a real two-node Ray cluster on this machine, and the faults a long sweep must survive.

One cluster for the module: ``ray start --head`` (resource ``node_a``) and ``ray start --address``
(resource ``node_b``), one CPU each, so two trials at once land on different nodes. Every sweep is
``alorectl sweep ... --address`` in a process of its own, on the tiny ``demo`` preset, and every
test ends with the leaderboard complete and no duplicate rows.

1. trials run on both nodes (the node ids the driver records in the ``trial`` table);
2. a trial process SIGKILLed mid-training is retried from its last checkpoint and finishes;
3. the driver SIGKILLed mid-sweep: ``sweep resume`` finishes the rest, finished trials are not rerun;
4. the worker node stopped mid-sweep (last: it leaves the cluster with the head only): its trial
   moves to the head, continuing from the checkpoint the other node wrote to the shared storage.

Waits poll processes, files and database rows, with generous deadlines (2 shared CPU cores).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from presets import tiny_sweep
from cluster_utils import (Driver, LocalCluster, alive, checkpoint_known, query, results, trial_dirs,
                           wait_for)

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(sys.platform != "linux", reason="reads processes from /proc")]

PRESET = tiny_sweep()
SWEEP_TIMEOUT = 900  # seconds; a generous bound for a few-trial sweep on a loaded 2-core machine


@pytest.fixture(scope="module")
def cluster():
    # A short root: Ray's unix sockets live under <temp-dir>/session_<date>_<pid>/sockets/ (107-byte limit).
    root = Path(tempfile.mkdtemp(prefix="alore-rc-", dir="/tmp"))
    c = LocalCluster(root)
    try:
        # The GCS marks a dead node dead after a few missed health checks, not the default ~30 s.
        c.add_node("node_a", head=True, env={"RAY_health_check_period_ms": "1000",
                                             "RAY_health_check_timeout_ms": "1000",
                                             "RAY_health_check_failure_threshold": "5"})
        c.add_node("node_b")
        c.wait_nodes({"node_a", "node_b"})
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(root, ignore_errors=True)


class Sweep:
    """A work folder with the demo data, a preset file, and ``alorectl`` pointed at the cluster."""

    def __init__(self, cluster: LocalCluster, demo_dir: Path, root: Path, name: str, **changes: Any) -> None:
        self.cluster, self.name = cluster, name
        self.work = root / "work"
        (self.work / "data").mkdir(parents=True)
        for item in demo_dir.iterdir():  # data + demo backbone, as the demo preset would generate them
            (self.work / "data" / item.name).symlink_to(item)
        self.preset = {**PRESET, **changes}
        self.preset_file = root / f"{name}.yaml"
        self.preset_file.write_text(yaml.safe_dump(self.preset))
        self.log = root / "alorectl.log"
        self.db = self.work / "leaderboard.db"
        drop = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ALORE_DB", "ALORE_WORKDIR", "ALORE_DATA_ROOT")
        self.env = {k: v for k, v in cluster.env.items() if k not in drop}
        self.drivers: list[Driver] = []

    @property
    def epochs(self) -> int:
        return self.preset["train"]["epochs"]

    def trials_per_cell(self) -> int:
        return self.preset["search"]["trials"] + len(self.preset["final"]["seeds"])

    def start(self, *args: str) -> Driver:
        driver = Driver([*args, "--workdir", str(self.work), "--address", self.cluster.address], self.env, self.log)
        self.drivers.append(driver)
        return driver

    def sweep(self, *flags: str) -> Driver:
        return self.start("sweep", str(self.preset_file), "--name", self.name, *flags)

    def resume(self, *flags: str) -> Driver:
        return self.start("sweep", "resume", self.name, *flags)

    def finish(self, driver: Driver) -> str:
        rc = driver.wait(SWEEP_TIMEOUT)
        output = self.log.read_text(errors="replace")
        assert rc == 0, output[-5000:]
        return output

    @property
    def experiment(self) -> Path:
        """The sweep's one Tune experiment: every cell's trials side by side."""
        return self.work / "ray" / self.name

    def trial_dirs(self, method: str, protocol: str) -> list[Path]:
        return trial_dirs(self.experiment, f"demo__digits__{method}__{protocol}-*")

    def stop(self) -> None:
        for d in self.drivers:
            if d.proc.poll() is None:
                d.kill()

    # --- the leaderboard -----------------------------------------------------------------------------

    def trials(self, method: str | None = None) -> list[tuple]:
        sql = ("SELECT t.id, c.method, t.trial_key, t.protocol, t.status, t.epochs_done, t.node_id, "
               "t.mlflow_run_id, t.val_acc, t.test_acc FROM trial t JOIN cell c ON c.id = t.cell_id")
        if method:
            return query(self.db, sql + " WHERE c.method = ? ORDER BY t.id", method)
        return query(self.db, sql + " ORDER BY t.id")

    def cell_status(self) -> dict[str, str]:
        return dict(query(self.db, "SELECT method, status FROM cell"))

    def assert_complete(self) -> None:
        """Every cell done, each with exactly its trials (search + one per seed), one result per cell."""
        methods = self.preset["methods"]
        assert self.cell_status() == dict.fromkeys(methods, "done")
        assert query(self.db, "SELECT name, status FROM sweep") == [(self.name, "done")]
        trials = self.trials()
        assert Counter(t[1] for t in trials) == dict.fromkeys(methods, self.trials_per_cell()), trials
        assert all(t[4] == "done" and t[5] == self.epochs for t in trials), trials
        board = query(self.db, "SELECT backbone, task, method FROM result")
        assert sorted(board) == sorted(("demo", "digits", m) for m in methods)


@pytest.fixture
def make_sweep(cluster, demo_dir, tmp_path):
    made: list[Sweep] = []

    def make(name: str, **changes: Any) -> Sweep:
        s = Sweep(cluster, demo_dir, tmp_path, name, **changes)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def running_trial(sweep: Sweep, method: str, protocol: str = "search", node: str | None = None,
                  room: int = 3) -> dict[str, Any] | None:
    """A trial that has checkpointed and has ``room`` epochs left at least, with its live process's pid and node."""
    for d in sweep.trial_dirs(method, protocol):
        rows = results(d)
        if not rows or not any(d.glob("checkpoint_*")):
            continue
        last = rows[-1]
        if last["epoch"] > sweep.epochs - room or (node and last["node_id"] != sweep.cluster.nodes[node].node_id):
            continue  # too close to its end to be sure to kill it mid-training, or not on that node
        if alive(last["pid"]) and any(n.owns(last["pid"]) for n in sweep.cluster.nodes.values()):
            return {"dir": d, "pid": last["pid"], "epoch": last["epoch"], "node_id": last["node_id"],
                    "trial_id": last["trial_id"]}
    return None


def assert_continued_from_checkpoint(history: list[dict[str, Any]], killed_pid: int, epochs: int) -> list[int]:
    """The killed process reported epochs 1..k; the retry (a new process) continued after a
    checkpoint (its first epoch > 1) up to the last epoch, instead of starting again from epoch 1."""
    before = [r["epoch"] for r in history if r["pid"] == killed_pid]
    after = [r["epoch"] for r in history if r["pid"] != killed_pid]
    assert before and before == list(range(1, len(before) + 1)), history
    assert after, f"no report after the kill: {history}"
    assert 1 < after[0] <= before[-1] + 1, f"the retry restarted from scratch: before {before}, after {after}"
    assert after == list(range(after[0], epochs + 1)), after
    return after


def test_sweep_runs_trials_on_both_nodes(make_sweep, cluster) -> None:
    sweep = make_sweep("twonode", final={"seeds": [42, 43]})
    output = sweep.finish(sweep.sweep())
    assert "done demo/digits/alore" in output
    sweep.assert_complete()
    nodes = {cluster.nodes["node_a"].node_id, cluster.nodes["node_b"].node_id}
    recorded = Counter(t[6] for t in sweep.trials())
    assert set(recorded) == nodes, f"trials ran on {dict(recorded)}, cluster nodes {nodes}"


def test_killed_trial_is_retried_from_its_checkpoint(make_sweep) -> None:
    sweep = make_sweep("trialkill", search={"algorithm": "optuna", "trials": 1, "scheduler": "fifo"},
                       train={"epochs": 8, "warmup_epochs": 1, "batch_size": 32})
    driver = sweep.sweep()
    victim = wait_for(lambda: running_trial(sweep, "alore"), "a search trial with a checkpoint",
                      timeout=SWEEP_TIMEOUT, proc=driver.proc, log=sweep.log, interval=0.2)
    os.kill(victim["pid"], signal.SIGKILL)
    sweep.finish(driver)
    sweep.assert_complete()
    history = results(victim["dir"])
    assert_continued_from_checkpoint(history, victim["pid"], sweep.epochs)
    key = victim["dir"].name.rsplit("__", 1)[1]
    row = next(t for t in sweep.trials() if t[2] == key)
    assert row[4] == "done" and row[5] == sweep.epochs and row[8] is not None


def test_killed_driver_is_resumed_without_rerunning_finished_trials(make_sweep) -> None:
    """SIGKILL the driver twice: the moment the first cell is done in the database (its MLflow logging
    may still be under way), then while the second cell's search is training; `sweep resume` each time.
    One trial at a time (--max-concurrent-trials 1), so that the second cell's search still has trials to
    suggest at both kills: the restored searcher must go on from its saved state."""
    from mlflow import MlflowClient

    # Both cells search 3 points of a bigger grid with Optuna, so the searcher's state matters across the kills.
    sweep = make_sweep("driverkill", methods=["alore", "bitfit"],
                       search={"algorithm": "optuna", "trials": 3, "scheduler": "fifo"},
                       space={"lr": [0.01, 0.005, 0.001], "weight_decay": [0.001, 0.0], "dropout": [0.1, 0.0]},
                       train={"epochs": 3, "warmup_epochs": 1, "batch_size": 32})
    one = ("--max-concurrent-trials", "1")
    driver = sweep.sweep(*one)
    wait_for(lambda: sweep.cell_status().get("alore") == "done", "the first cell done", timeout=SWEEP_TIMEOUT,
             proc=driver.proc, log=sweep.log, interval=0.2)
    driver.kill()  # SIGKILL: no handler runs, the sweep row still says "running"
    assert sweep.cell_status().get("bitfit") != "done"
    # What the finished cell ran: its trial rows (less the MLflow run id, which its logging fills in)
    # and every file its Tune trials wrote.
    first_trials = [t[:7] + t[8:] for t in sweep.trials("alore")]
    assert len(first_trials) == sweep.trials_per_cell()

    def tune_files(method: str) -> dict[Path, Any]:
        """What the cell's trials trained: their checkpoints (written when an epoch trains) and the processes
        and times of their reports (a trial that ran again would report from another process; a report the
        killed driver had not yet flushed to result.json may appear there later, from the same process)."""
        return {p: (p.stat().st_mtime_ns if "checkpoint_" in str(p)
                    else {(r.get("epoch"), r.get("pid"), r.get("timestamp")) for r in results(d)})
                for m in ("search", "final") for d in sweep.trial_dirs(method, m) for p in d.rglob("*")
                if p.is_file() and ("checkpoint_" in str(p) or p.name == "result.json")}

    first_files = tune_files("alore")
    assert first_files

    driver = sweep.resume(*one)

    def checkpointed() -> dict[str, Any] | None:
        found = running_trial(sweep, "bitfit", room=1)
        return found if found and checkpoint_known(sweep.experiment, found["trial_id"]) else None

    victim = wait_for(checkpointed, "a search trial of the second cell with a checkpoint in Tune's state",
                      timeout=SWEEP_TIMEOUT, proc=driver.proc, log=sweep.log, interval=0.2)
    driver.kill()  # Ray ends the job's trials with it
    wait_for(lambda: not alive(victim["pid"]), "the killed driver's trial to end", timeout=120)

    output = sweep.finish(sweep.resume(*one))
    last = output[output.rindex("sweep driverkill"):]  # what the last `sweep resume` printed
    assert "done demo/digits/bitfit" in last and "done demo/digits/alore" not in last, last[-3000:]
    sweep.assert_complete()
    assert [t[:7] + t[8:] for t in sweep.trials("alore")] == first_trials, "finished trials were not rerun"
    files = tune_files("alore")
    # No file new: a trial that ran again would write one. Checkpoints may be gone: an ended trial's are
    # removed once it is recorded (Driver.discard_checkpoints, which the resumed driver catches up on).
    assert files.keys() <= first_files.keys(), "no trial of the finished cell ran again"
    assert {p for p, v in first_files.items() if isinstance(v, set)} <= files.keys(), "every report kept"
    for path, now in files.items():
        before = first_files[path]
        if isinstance(before, set):  # reports: the same ones (perhaps one more flushed), by the same processes
            assert before <= now and {r[1] for r in now} <= {r[1] for r in before}, path
        else:  # a checkpoint: not written again
            assert now == before, path
    unlogged = [t[1:3] for t in sweep.trials() if not t[7]]
    assert not unlogged, f"MLflow logging cut short by the kill was never completed: {unlogged}"
    for method in ("alore", "bitfit"):
        searched = [t for t in sweep.trials(method) if t[3] == "search"]
        # A trial suggested after Tune's last state snapshot is suggested again after the restore (Tune gives
        # its folder a suffix); the search still has exactly its budget of distinct trials.
        keys = {d.name.split("__")[-1].split("_")[0] for d in sweep.trial_dirs(method, "search")}
        assert len(keys) == len(searched) == sweep.preset["search"]["trials"], \
            "the interrupted search was restored (trials and the searcher's state), not started again"
    for method in ("alore", "bitfit"):
        configs = query(sweep.db, "SELECT t.config FROM trial t JOIN cell c ON c.id = t.cell_id "
                                  "WHERE c.method = ? AND t.protocol = 'search'", method)
        assert len(set(configs)) == len(configs), "no configuration searched twice across the restarts"
    assert_continued_from_checkpoint(results(victim["dir"]), victim["pid"], sweep.epochs)

    client = MlflowClient(f"sqlite:///{sweep.work / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"alore/{sweep.name}")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    keys = Counter(r.data.tags.get("alore.key") for r in runs)
    assert all(n == 1 for n in keys.values()), f"duplicate MLflow runs: {keys}"
    for method in ("alore", "bitfit"):
        parents = [r for r in runs if r.data.tags.get("method") == method and "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED"
        assert len(children) == sweep.trials_per_cell() and {r.info.status for r in children} == {"FINISHED"}
    assert len(runs) == 2 * (1 + sweep.trials_per_cell())  # per cell a parent and its trials
    assert all(r.data.tags.get("alore.complete") == "1" for r in runs), "every run logged completely"


def test_stopped_worker_node_trials_move_to_the_head(make_sweep, cluster) -> None:
    """Runs last: the module's cluster keeps only its head afterwards."""
    sweep = make_sweep("nodestop", train={"epochs": 8, "warmup_epochs": 1, "batch_size": 32})
    head, worker = cluster.nodes["node_a"], cluster.nodes["node_b"]
    driver = sweep.sweep()
    victim = wait_for(lambda: running_trial(sweep, "alore", node="node_b"),
                      "a search trial on the worker node with a checkpoint", timeout=SWEEP_TIMEOUT,
                      proc=driver.proc, log=sweep.log, interval=0.2)
    worker.kill()
    assert worker.raylet() is None and not alive(victim["pid"])
    # On one host the worker's node-local files would still be readable: remove them, so the retry on the
    # head can only continue from what the worker wrote to the shared work folder.
    shutil.rmtree(worker.temp_dir, ignore_errors=True)
    sweep.finish(driver)
    sweep.assert_complete()
    trials = sweep.trials()
    assert {t[6] for t in trials} == {head.node_id}, "every trial ended on the head"
    history = results(victim["dir"])
    after = assert_continued_from_checkpoint(history, victim["pid"], sweep.epochs)
    assert all(r["node_id"] == head.node_id for r in history[-len(after):])
