"""The searcher's Optuna studies: trials told in the state they really ended in (ASHA's stops are PRUNED with
their per-epoch val200, errors are FAIL), and the studies kept in Optuna's own storage."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from ray.tune.search import Searcher

from alorectl.sweep import plan as planning
from alorectl.sweep import preset as presets
from alorectl.sweep import studies
from alorectl.sweep.searcher import SweepSearcher

TrialState = optuna.trial.TrialState


def make_plan(name: str = "t", **changes) -> planning.SweepPlan:
    p = dataclasses.replace(presets.load("demo"), **changes)
    presets.validate(p)
    return planning.build(p, name, "/data", {b: "w.safetensors" for b in p.backbones}, cost=lambda b: 1.0)


def issue(searcher: SweepSearcher, n: int) -> list[tuple[str, planning.TrialSpec]]:
    out = []
    for i in range(n):
        config = searcher.suggest(f"t{i}")
        assert config not in (None, Searcher.FINISHED)
        out.append((f"t{i}", planning.TrialSpec.from_config(config)))
    return out


def run_epochs(searcher: SweepSearcher, trial_id: str, curve: list[float]) -> None:
    for epoch, value in enumerate(curve, start=1):
        searcher.on_trial_result(trial_id, {"val_acc": value, "epoch": epoch})


def test_asha_stop_is_pruned_with_its_curve_and_an_error_is_failed() -> None:
    plan = make_plan(methods=["alore"], tasks=["digits"], trials=4, scheduler="asha", epochs=8)
    cp = plan.cells[0]
    assert not cp.exhaustive
    s = SweepSearcher(plan)
    (full, _), (stopped, _), (broken, _) = issue(s, 3)
    run_epochs(s, full, [40.0 + e for e in range(8)])
    s.on_trial_complete(full, {"val_acc": 47.0, "epoch": 8})
    run_epochs(s, stopped, [30.0, 35.0])             # ASHA stops it after its second epoch
    s.on_trial_complete(stopped, {"val_acc": 35.0, "epoch": 2})
    run_epochs(s, broken, [20.0])
    s.on_trial_complete(broken, None, error=True)
    trials = {t.user_attrs["search_index"]: t for t in s.study(cp).trials if "search_index" in t.user_attrs}
    assert sorted(trials) == [0, 1, 2]
    by_state = {t.state: t for t in trials.values()}
    assert by_state[TrialState.COMPLETE].value == 47.0
    pruned = by_state.get(TrialState.PRUNED)
    assert pruned is not None, "a trial ASHA stopped is not a complete one"
    assert pruned.intermediate_values == {1: 30.0, 2: 35.0}
    assert by_state[TrialState.COMPLETE].intermediate_values[8] == 47.0
    assert TrialState.FAIL in by_state and by_state[TrialState.FAIL].intermediate_values == {1: 20.0}
    assert sorted(t.state for t in trials.values()) == sorted([TrialState.COMPLETE, TrialState.PRUNED,
                                                                TrialState.FAIL])


# ---- the studies in Optuna's own storage (a journal file in the work folder) ---------------------------------

def drain(searcher: SweepSearcher, start: int = 0, value=lambda spec: 50.0 + spec.index):
    """Suggest until the searcher waits or finishes, finishing every trial at once (2 epochs reported)."""
    issued, n = [], start
    while True:
        config = searcher.suggest(f"t{n}")
        if config is None or config == Searcher.FINISHED:
            return issued, config
        spec = planning.TrialSpec.from_config(config)
        issued.append(spec)
        epochs = spec.run.epochs
        run_epochs(searcher, f"t{n}", [value(spec) - 1.0] * (epochs - 1))
        searcher.on_trial_complete(f"t{n}", {"val_acc": value(spec), "epoch": epochs, "test_acc": 60.0})
        n += 1


def stored(workdir, sweep: str, cell: planning.Cell) -> optuna.Study:
    """The study as any Optuna tool sees it: a fresh storage on the journal file."""
    storage = studies.open_journal(workdir, create=False)
    return studies.load(storage, sweep, cell.backbone, cell.task, cell.method)


@pytest.fixture
def journal(tmp_path):
    """The journal the driver opens for a sweep named ``t``; closed again after the test."""
    yield tmp_path
    studies.use("t", None)


def test_each_cell_has_a_named_study_with_its_plan_and_its_trials(journal) -> None:
    plan = make_plan(methods=["alore", "ssf"], tasks=["digits"], trials=4, seeds=[1])
    studies.use("t", studies.open_journal(journal))
    issued, end = drain(SweepSearcher(plan))
    assert end == Searcher.FINISHED
    storage = studies.open_journal(journal, create=False)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["t/demo/digits/alore", "t/demo/digits/ssf"]
    for cp in plan.cells:
        study = stored(journal, "t", cp.cell)
        attrs = study.user_attrs
        assert attrs["grid"] == cp.space and attrs["budget"] == cp.n_search == 4
        assert attrs["exhaustive"] == cp.exhaustive and attrs["grid_size"] == cp.grid_size
        searched = {s.index: s.params for s in issued if s.cell == cp.cell and s.phase == planning.SEARCH}
        trials = study.get_trials()
        assert [t.user_attrs["search_index"] for t in trials] == [0, 1, 2, 3], "one trial per search trial"
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert {t.user_attrs["search_index"]: t.params for t in trials} == searched
        assert trials[2].value == 52.0 and trials[2].intermediate_values[1] == 51.0
    assert oct(studies.journal_path(journal).stat().st_mode & 0o777) == "0o600"


def test_restored_searcher_mirrors_its_json_and_keeps_the_budget_exact(journal) -> None:
    """A driver kill after Tune's last checkpoint of the searcher: the journal is ahead of the JSON (two more
    trials ended), and Tune runs those trials again. The restored study is the JSON's, then grows to the budget."""
    import pickle

    plan = make_plan(methods=["alore"], tasks=["digits"], trials=8, seeds=[1])
    cp = plan.cells[0]
    studies.use("t", studies.open_journal(journal))
    s = SweepSearcher(plan)
    first = issue(s, 5)
    for tid, spec in first[:3]:
        s.on_trial_complete(tid, {"val_acc": 50.0 + spec.index, "epoch": spec.run.epochs})
    s.save(str(journal / "searcher.json"))            # Tune's last checkpoint of the searcher
    for tid, spec in first[3:]:                        # these end after it, then the driver dies
        s.on_trial_complete(tid, {"val_acc": 10.0, "epoch": spec.run.epochs})
    assert len(stored(journal, "t", cp.cell).get_trials()) == 5

    studies.use("t", studies.open_journal(journal))   # a new driver opens the journal again
    restored = pickle.loads(pickle.dumps(s))
    restored.restore(str(journal / "searcher.json"))
    assert [t.user_attrs["search_index"] for t in restored.study(cp).get_trials()] == [0, 1, 2], \
        "the study is what the JSON holds, not what ran after Tune's checkpoint"
    for tid, spec in first[3:]:                        # Tune reruns the two trials in flight at its checkpoint
        restored.on_trial_complete(tid, {"val_acc": 70.0 + spec.index, "epoch": spec.run.epochs})
    rest, end = drain(restored, start=100)
    assert end == Searcher.FINISHED
    trials = stored(journal, "t", cp.cell).get_trials()
    assert sorted(t.user_attrs["search_index"] for t in trials) == list(range(8)), "the budget, exactly"
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8, "no repeated configuration"
    assert [t.value for t in trials if t.user_attrs["search_index"] in (3, 4)] == [73.0, 74.0]


def test_a_journal_line_cut_by_a_kill_is_dropped_not_fatal(journal) -> None:
    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=2, seeds=[1])
    studies.use("t", studies.open_journal(journal))
    drain(SweepSearcher(plan))
    path = studies.journal_path(journal)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code":5,"worker_id":"x","study_id":0,"datetime_st')  # killed mid-write
    assert len(stored(journal, "t", plan.cells[0].cell).get_trials()) == 2, "a reader skips the unfinished line"
    assert path.read_bytes() != whole, "and leaves it: the writer may be writing it now"
    studies.use("t", studies.open_journal(journal))   # the next driver, the one writer, drops it
    assert path.read_bytes() == whole
    s = SweepSearcher(make_plan(name="t", methods=["lora"], tasks=["digits"], trials=2, seeds=[1]))
    drain(s)                                          # and writes after it: the journal stays readable
    assert len(stored(journal, "t", plan.cells[0].cell).get_trials()) == 2
    assert len(stored(journal, "t", s.plan.cells[0].cell).get_trials()) == 2


def test_the_driver_writes_the_journal_without_waiting_for_the_disk(journal, monkeypatch) -> None:
    """No fsync per line (the driver writes on Tune's event loop), and still Optuna's own journal: Optuna's
    reader sees every study and trial, and the write lock is Optuna's, released after each write."""
    import os

    def fsync(fd: int) -> None:
        raise AssertionError("the driver's journal waited for the disk (fsync)")

    monkeypatch.setattr(os, "fsync", fsync)
    plan = make_plan(methods=["alore", "ssf"], tasks=["digits"], trials=3, seeds=[1])
    studies.use("t", studies.open_journal(journal))
    _, end = drain(SweepSearcher(plan))
    assert end == Searcher.FINISHED
    for cp in plan.cells:
        assert [t.user_attrs["search_index"] for t in stored(journal, "t", cp.cell).get_trials()] == [0, 1, 2]
    path = studies.journal_path(journal)
    assert not path.with_name(path.name + ".lock").exists(), "the lock is released after each write"


def test_the_dashboard_command_names_the_journal(tmp_path) -> None:
    assert studies.dashboard_command(tmp_path) == f"optuna-dashboard {tmp_path.resolve() / 'optuna.journal'}"


# ---- warm start from an earlier sweep ------------------------------------------------------------------------

def test_a_warm_started_cell_starts_from_the_sources_best_configurations(journal) -> None:
    """The source sweep searched its whole grid on the demo backbone; a sweep on vit_b with a narrower lr grid
    starts each cell from the source's best configurations inside its own grid, and keeps its budget."""
    def score(spec: planning.TrialSpec) -> float:
        p = spec.params
        return 100 * p["lr"] + 10 * p["dropout"] + 100 * p["weight_decay"]

    src = make_plan(name="src", methods=["alore"], tasks=["digits"], trials=100, seeds=[1])
    assert src.cells[0].exhaustive and src.cells[0].space["lr"] == [0.05, 0.01, 0.005]
    storage = studies.open_journal(journal)
    studies.use("src", storage)
    drain(SweepSearcher(src), value=score)
    studies.use("src", None)

    space = {"lr": [0.01, 0.005], "weight_decay": [0.01, 0.001], "dropout": [0.1, 0.0]}
    plan = make_plan(backbones=["vit_b"], methods=["alore"], tasks=["digits"], trials=6, seeds=[1], space=space)
    cp = plan.cells[0]
    assert not cp.exhaustive and cp.n_search == 6
    warnings: list[str] = []
    studies.use("t", storage, studies.warm_starts(storage, plan, ["src"], warnings.append))
    issued, end = drain(SweepSearcher(plan))
    search = [s.params for s in issued if s.phase == planning.SEARCH]
    expected = [{"lr": 0.01, "weight_decay": 0.01, "dropout": 0.1},     # 3.0
                {"lr": 0.005, "weight_decay": 0.01, "dropout": 0.1},    # 2.5
                {"lr": 0.01, "weight_decay": 0.001, "dropout": 0.1}]    # 2.1
    assert search[:3] == expected, "the source's three best configurations inside this grid, best first"
    assert len(search) == 6 and len({json.dumps(p, sort_keys=True) for p in search}) == 6, "the budget, unchanged"
    assert end == Searcher.FINISHED
    assert len(warnings) == 4 and all("outside the grid" in w and "'lr': 0.05" in w for w in warnings)
    trials = stored(journal, "t", cp.cell).get_trials()
    assert [t.user_attrs.get("warm_start_from") for t in trials[:4]] == ["src/demo/digits/alore"] * 3 + [None]


# ---- pictures of a cell's search (the sweep logs them to MLflow: tests/test_models.py) ----------------------

def test_analyze_search_draws_a_cells_study_once_it_has_three_complete_trials(journal) -> None:
    from typer.testing import CliRunner

    from alorectl.cli import app

    plan = make_plan(methods=["alore", "ssf"], tasks=["digits"], trials=3, seeds=[1])
    studies.use("t", studies.open_journal(journal))
    s = SweepSearcher(plan)
    issued = issue(s, 6)
    for tid, spec in issued:
        if spec.cell.method == "alore" or spec.index < 2:  # ssf: two complete, one pruned
            s.on_trial_complete(tid, {"val_acc": 50.0 + spec.index, "epoch": spec.run.epochs})
        else:
            s.on_trial_complete(tid, {"val_acc": 10.0, "epoch": 1})
    runner = CliRunner()
    args = ["analyze", "search", "--backbone", "demo", "--task", "digits", "--workdir", str(journal)]
    done = runner.invoke(app, [*args, "--method", "alore", "--out", str(journal / "pics")])
    assert done.exit_code == 0, done.output
    files = sorted((journal / "pics").iterdir())
    assert [f.name for f in files] == ["parallel_coordinate.png", "param_importances.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files)
    few = runner.invoke(app, [*args, "--method", "ssf", "--out", str(journal / "none")])
    assert few.exit_code == 2 and "has 2 complete trial(s); its pictures need at least 3" in few.stderr
    unknown = runner.invoke(app, [*args, "--method", "lora"])
    assert unknown.exit_code == 2 and "valid choices: demo/digits/alore, demo/digits/ssf" in unknown.stderr
    assert not (journal / "none").exists() and not (journal / "analysis").exists()


def test_the_sweeps_drawer_draws_in_a_process_of_its_own(journal) -> None:
    """The sweep draws a cell's pictures outside the driver's process (matplotlib would hold its GIL): a fresh
    interpreter that asks the drawer for them gets the files and has not imported matplotlib itself."""
    import subprocess
    import sys

    plan = make_plan(methods=["alore"], tasks=["digits"], trials=3, seeds=[1])
    studies.use("t", studies.open_journal(journal))
    s = SweepSearcher(plan)
    for tid, spec in issue(s, 3):
        s.on_trial_complete(tid, {"val_acc": 50.0 + spec.index, "epoch": spec.run.epochs})
    code = ("import sys; from pathlib import Path; from alorectl.results.pictures import Drawer; d = Drawer(); "
            f"files = d.draw(Path({str(journal)!r}), 't', 'demo', 'digits', 'alore', Path({str(journal / 'out')!r})); "
            "d.close(); print(sorted(f.name for f in files), 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "['parallel_coordinate.png', 'param_importances.png'] False"
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in (journal / "out").iterdir())


def test_a_cells_pictures_are_drawn_while_its_final_runs_train(journal, monkeypatch) -> None:
    """The sweep starts drawing a cell's pictures when its search ends (its first final run starts), in the
    drawing process, and logs them with the cell's result: they are drawn before the result arrives, and the
    folder they were drawn in is gone once they are logged."""
    import tempfile
    import time

    from mlflow import MlflowClient

    from alorectl.sweep.record import CellResult
    from alorectl.tracking.client import Tracker
    from alorectl.tracking.observer import Track

    plan = make_plan(methods=["alore"], tasks=["digits"], trials=3, seeds=[1])
    cell = plan.cells[0].cell
    studies.use("t", studies.open_journal(journal))
    s = SweepSearcher(plan)
    for tid, spec in issue(s, 3):
        s.on_trial_complete(tid, {"val_acc": 50.0 + spec.index, "epoch": spec.run.epochs})
    scratch = journal / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    uri = f"sqlite:///{journal / 'mlflow.db'}"
    track = Track(Tracker(uri, journal / "artifacts"), plan, warn=pytest.fail, workdir=journal)
    try:
        track.draw_soon(cell)
        drawn: list = []
        for _ in range(1200):  # nothing else is asked of the track: the drawing process draws on its own
            drawn = sorted(p.name for p in scratch.glob("alore-search-*/work/*.png"))
            if len(drawn) == 2:
                break
            time.sleep(0.1)
        assert drawn == ["parallel_coordinate.png", "param_importances.png"]
        run = track.cell(CellResult(cell, "vtab", 60.0, 0.0, {1: 60.0}, 52.0, 1000, {"lr": 0.01}, {}, (1,), 10, None))
    finally:
        track.close()
    logged = {a.path for a in MlflowClient(uri).list_artifacts(run, "search")}
    assert logged == {"search/param_importances.png", "search/parallel_coordinate.png"}
    assert not list(scratch.iterdir()), "the drawing's folder is removed once its pictures are logged"


def test_the_drawing_process_yields_the_cpu_to_the_driver_and_trials(tmp_path) -> None:
    """Pictures wait where the driver and the trials need every core: the drawing process runs niced."""
    import os

    from alorectl.results.pictures import NICENESS, Drawer

    drawer = Drawer()
    try:
        assert drawer.wait(drawer.start(tmp_path, "t", "demo", "digits", "alore", tmp_path / "out")) == []  # no study
        assert drawer.pool.submit(os.nice, 0).result(timeout=300) == min(19, os.nice(0) + NICENESS)
    finally:
        drawer.close()


def test_a_job_that_waits_lets_the_jobs_behind_it_run() -> None:
    """The tracking thread logs a cell's result only once its pictures are drawn (Driver.log_cell): meanwhile
    the trials' runs queued behind it are logged."""
    from alorectl.tracking.observer import Background

    ran: list[str] = []
    ready = {"pictures": False}
    later = Background()

    def cell() -> None:
        if not ready["pictures"]:
            later.again(cell)
            return
        ran.append("cell")

    def trial() -> None:
        ran.append("trial")
        ready["pictures"] = True

    later.put(cell)
    later.put(trial)
    later.drain()
    later.close()
    assert ran == ["trial", "cell"]
