"""The searcher's typed state (issue 17): saved as JSON in Tune's checkpoint, read back whole, and the untyped
dictionaries an earlier version saved still resume."""

from __future__ import annotations

import json

from alorectl.sweep.search_state import (DONE, FAILED, PRUNED, RUNNING, CellState, Chosen, FinalEntry, SearchEntry,
                                         SearcherState, Where)


def test_the_state_survives_a_json_round_trip() -> None:
    state = SearcherState.new(["vit_b__cifar__alore", "vit_b__dtd__lora"])
    cell = state.cells["vit_b__cifar__alore"]
    cell.search += [SearchEntry({"lr": 0.01, "weight_decay": 0.0}, DONE, 61.5, 10, curve={"1": 20.0, "10": 61.5}),
                    SearchEntry({"lr": 0.05, "weight_decay": 0.01}, PRUNED, 30.0, 2, warm_start_from="old/x"),
                    SearchEntry({"lr": 0.001, "weight_decay": 0.0}, FAILED, error=True)]
    cell.chosen = Chosen(0, {"lr": 0.01, "weight_decay": 0.0}, 61.5)
    cell.finals.append(FinalEntry(42))
    cell.warm = [{"params": {"lr": 0.05, "weight_decay": 0.01}, "from": "old/x"}]
    state.trials["t1"] = Where("vit_b__cifar__alore", "final", 0)
    state.reissue.append(Where("vit_b__dtd__lora", "search", 3))
    back = SearcherState.from_json(json.loads(json.dumps(state.to_json())))
    assert back == state
    assert back.entry(Where("vit_b__cifar__alore", "search", 0)).points() == [(1, 20.0), (10, 61.5)]
    assert back.cells["vit_b__dtd__lora"] == CellState()


def test_a_state_saved_by_the_untyped_searcher_is_read() -> None:
    old = {"cells": {"c": {"search": [{"params": {"lr": 0.01}, "status": "done", "value": 50.0, "epochs": 3,
                                       "error": False, "curve": {"3": 50.0}},
                                      {"params": {"lr": 0.05}, "status": "failed", "value": None, "epochs": 0},
                                      {"params": {"lr": 0.1}, "status": "running", "value": None, "epochs": 0}],
                           "finals": [], "chosen": None, "failed": None}},
           "trials": {"a": ["c", "search", 2]}}
    state = SearcherState.from_json(old)
    search = state.cells["c"].search
    assert [e.status for e in search] == [DONE, FAILED, RUNNING]
    assert search[1].error, "a failed entry saved without the flag is retried on resume, as before"
    assert state.trials == {"a": Where("c", "search", 2)} and state.reissue == []
    assert state.cells["c"].warm is None
