"""The searcher's Optuna studies: trials told in the state they really ended in (ASHA's stops are PRUNED with
their per-epoch val200, errors are FAIL), and the studies kept in Optuna's own storage."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from ray.tune.search import Searcher

from alorectl.sweep import plan as planning
from alorectl.sweep import preset as presets
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
