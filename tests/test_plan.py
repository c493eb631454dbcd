"""The plan layer and the searcher, without Ray: cells, specs, per-method spaces, grid when the budget covers
it, no repeated configuration, finals as soon as a cell's search ends, restore, and the dry-run estimate."""

from __future__ import annotations

import dataclasses
import json

import pytest
from ray.tune.search import Searcher
from typer.testing import CliRunner

from alorectl.sweep import plan as planning
from alorectl.sweep import preset as presets
from alorectl.cli import app
from alorectl.sweep.searcher import SweepSearcher

from plans import COSTS, drain, make_plan


def test_cells_have_each_methods_own_space() -> None:
    plan = make_plan(backbones=["vit_b", "vit_h", "vit_l"], tasks=["digits"], methods=["ssf", "alore", "repadapter"])
    spaces = {cp.cell.method: cp.space for cp in plan.cells if cp.cell.backbone == "vit_b"}
    assert "dropout" not in spaces["ssf"], "SSF has no dropout: searching it wastes trials"
    assert "dropout" in spaces["alore"] and "scale" in spaces["repadapter"]
    assert plan.total_trials == sum(cp.n_search + 1 for cp in plan.cells)


def test_backbones_advance_together_between_a_costliest_head_and_tail() -> None:
    """The issue order (plan.issue_order): not every cheap cell at the end, where each slot would ask the driver
    for a trial every cheap trial; long trials first, while the workers start; no costly cell as the tail."""
    p = dataclasses.replace(presets.load("vtab"), backbones=["vit_b", "vit_h", "vit_l"])
    plan = planning.build(p, "t", "/data", {}, cost=COSTS.__getitem__)
    order = [cp.cell.backbone for cp in plan.cells]
    work = [cp.cost * cp.n_trials for cp in plan.cells]
    total = sum(work)
    cum = [sum(work[:i]) for i in range(len(work) + 1)]  # the work issued before cell i
    head = next(i for i in range(len(work)) if cum[i] >= planning.HEAD_SHARE * total)
    body = next(i for i in range(len(work)) if total - cum[i] <= planning.TAIL_SHARE * total)
    assert len(order) == 342 and 10 <= head <= 20 and set(order[:head]) == {"vit_h"}, order[:head + 3]
    assert order[head:head + 3] == ["vit_h", "vit_l", "vit_b"] and 300 <= body <= 320  # the body: in step
    left = {b: sum(w for i, (w, o) in enumerate(zip(work, order)) if o == b and i >= head) for b in COSTS}
    done = dict.fromkeys(COSTS, 0.0)
    for i in range(head, body):  # the body: each backbone within one cell of its share of what the head left
        done[order[i]] += work[i]
        shares = [done[b] / left[b] for b in ("vit_b", "vit_l", "vit_h")]
        assert max(shares) - min(shares) <= 1 / min(order[head:].count(b) for b in COSTS if b in order) + 1e-9, (i, shares)
    tail = [cp.cost for cp in plan.cells[body:]]
    assert tail == sorted(tail, reverse=True) and order[-1] == "vit_b", "the tail: costliest first"
    one = make_plan(tasks=["digits", "digits_rot"], methods=["ssf", "alore", "lora"])
    assert [(cp.cell.task, cp.cell.method) for cp in one.cells] == [
        (t, m) for t in ("digits", "digits_rot") for m in ("ssf", "alore", "lora")], "one backbone: the preset's order"


def test_budget_covering_the_grid_is_the_exhaustive_grid() -> None:
    plan = make_plan(methods=["ssf"], tasks=["digits"], trials=100)
    cp = plan.cells[0]
    assert cp.exhaustive and cp.n_search == cp.grid_size == 6  # lr 3 x wd 2
    issued, end = drain(SweepSearcher(plan))
    points = [tuple(s.params.values()) for _, s in issued if s.phase == planning.SEARCH]
    assert len(points) == 6 and len(set(points)) == 6
    assert end == Searcher.FINISHED


def test_optuna_never_repeats_a_configuration_of_its_cell() -> None:
    plan = make_plan(methods=["alore"], tasks=["digits"], trials=11)  # grid 12: nearly all of it
    cp = plan.cells[0]
    assert not cp.exhaustive and cp.grid_size == 12
    issued, _ = drain(SweepSearcher(plan), values=lambda spec: 70.0)  # equal values: TPE likes repeating
    points = [json.dumps(s.params, sort_keys=True) for _, s in issued if s.phase == planning.SEARCH]
    assert len(points) == 11 and len(set(points)) == 11


def test_finals_start_when_their_cells_search_ends_and_use_the_best_val_config() -> None:
    plan = make_plan(methods=["alore", "lora"], tasks=["digits"], trials=3, seeds=[1, 2])
    s = SweepSearcher(plan)
    issued, waiting = drain(s, complete_search=False)
    assert waiting is None and all(spec.phase == planning.SEARCH for _, spec in issued) and len(issued) == 6
    lora = [(tid, spec) for tid, spec in issued if spec.cell.method == "lora"]
    scores = {0: 40.0, 1: 90.0, 2: 60.0}
    for tid, spec in lora:
        s.on_trial_complete(tid, {"val_acc": scores[spec.index], "epoch": spec.run.epochs})
    config = s.suggest("f1")
    final = planning.TrialSpec.from_config(config)
    assert final.phase == planning.FINAL and final.cell.method == "lora", "the finished cell goes first"
    assert final.params == lora[1][1].params and final.chosen_val_acc == 90.0
    assert final.seed == 1 and planning.TrialSpec.from_config(s.suggest("f2")).seed == 2
    assert s.suggest("f3") is None, "alore's search is still running"


def test_pruned_trials_rank_below_full_ones_and_failed_search_fails_the_cell() -> None:
    plan = make_plan(methods=["alore", "lora"], tasks=["digits"], trials=2)
    s = SweepSearcher(plan)
    issued, _ = drain(s, complete_search=False)
    by = {(spec.cell.method, spec.index): tid for tid, spec in issued}
    epochs = plan.cells[0].run.epochs
    s.on_trial_complete(by[("alore", 0)], {"val_acc": 99.0, "epoch": 1})          # pruned early
    s.on_trial_complete(by[("alore", 1)], {"val_acc": 70.0, "epoch": epochs})
    s.on_trial_complete(by[("lora", 0)], None, error=True)
    s.on_trial_complete(by[("lora", 1)], None, error=True)
    final = planning.TrialSpec.from_config(s.suggest("f"))
    assert final.cell.method == "alore" and final.chosen_val_acc == 70.0
    s.on_trial_complete("f", {"test_acc": 1.0, "epoch": epochs})
    assert s.suggest("g") == Searcher.FINISHED, "a cell whose search all failed gets no final runs"


def test_restored_searcher_continues_without_repeating(tmp_path) -> None:
    plan = make_plan(methods=["alore"], tasks=["digits"], trials=8, seeds=[1])
    s = SweepSearcher(plan)
    first = []
    for n in range(4):
        spec = planning.TrialSpec.from_config(s.suggest(f"t{n}"))
        first.append(spec)
        if n < 3:  # the fourth is in flight when the driver dies
            s.on_trial_complete(f"t{n}", {"val_acc": 50.0 + n, "epoch": spec.run.epochs})
    s.save(str(tmp_path / "state.json"))
    json.loads((tmp_path / "state.json").read_text())  # JSON, not a pickle
    import pickle

    restored = pickle.loads(pickle.dumps(s))  # what Tune does with the searcher in tuner.pkl ...
    restored.restore(str(tmp_path / "state.json"))  # ... then its saved state
    restored.on_trial_complete("t3", {"val_acc": 60.0, "epoch": first[3].run.epochs})
    rest, end = drain(restored)
    search = [spec for _, spec in rest if spec.phase == planning.SEARCH]
    assert len(first) + len(search) == 8, "the trial count as budgeted"
    points = [json.dumps(sp.params, sort_keys=True) for sp in first + search]
    assert len(set(points)) == 8, "no repeated suggestion after the restore"
    finals = [spec for _, spec in rest if spec.phase == planning.FINAL]
    assert len(finals) == 1 and end == Searcher.FINISHED


def test_spec_round_trips_through_tunes_config_and_into_train_config() -> None:
    from alore.train import TrainConfig

    plan = make_plan(methods=["repadapter"], tasks=["digits"])
    spec = planning.TrialSpec.from_config(SweepSearcher(plan).suggest("x"))
    assert planning.TrialSpec.from_config(json.loads(json.dumps(spec.to_config()))) == spec
    cfg = TrainConfig(**spec.train_kwargs())
    assert cfg.method_options == {"scale": spec.params["scale"]} and cfg.lr == spec.params["lr"]
    assert cfg.protocol == "search" and spec.key == "search-00" and "lr=" in spec.run_name


def test_makespan_estimate_fills_the_slots() -> None:
    plan = make_plan(backbones=["vit_b", "vit_h"], tasks=["digits", "digits_rot"], methods=["alore", "lora"],
                     trials=4)
    work = sum(cp.n_trials * cp.cost for cp in plan.cells)
    one = planning.estimate_makespan(plan, 1)
    assert one == pytest.approx(work)
    many = planning.estimate_makespan(plan, 8)
    # Cells in flight at once: close to the work bound, and bounded below by the longest cell's chain.
    longest = max(cp.cost * 2 for cp in plan.cells)  # one search round, then one final round
    assert max(work / 8, longest) <= many < work / 8 * 1.5 + longest


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path) -> None:
    result = CliRunner().invoke(app, ["sweep", "vtab", "--backbones", "vit_b,vit_h", "--tasks", "cifar,dtd",
                                      "--methods", "alore,ssf", "--dry-run", "--gpus", "4",
                                      "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "8 cells" in out and "ViT-B trials" in out
    assert not (tmp_path / "w").exists(), "a dry run writes nothing"
