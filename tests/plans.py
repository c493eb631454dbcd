"""Plans and a searcher driver for the tests of the plan layer and the searcher (no Ray cluster): the demo
preset with any change, costs by backbone, and ``drain``, which plays Tune's part. Shared by test_plan and
test_searcher_restore, so that no test module imports another."""

from __future__ import annotations

import dataclasses

from ray.tune.search import Searcher

from alorectl.sweep import plan as planning
from alorectl.sweep import preset as presets
from alorectl.sweep.searcher import SweepSearcher

COSTS = {"vit_b": 1.0, "vit_l": 3.5, "vit_h": 9.5, "demo": 0.01}


def make_plan(**changes) -> planning.SweepPlan:
    p = dataclasses.replace(presets.load("demo"), **changes)
    presets.validate(p)
    return planning.build(p, "t", "/data", {b: "w.safetensors" for b in p.backbones}, cost=COSTS.__getitem__)


def drain(searcher: SweepSearcher, values=lambda spec: 50.0 + spec.index, complete_search: bool = True):
    """Suggest until the searcher waits or finishes; complete each search trial as it is issued."""
    issued = []
    n = 0
    while True:
        config = searcher.suggest(f"t{n}")
        if config is None or config == Searcher.FINISHED:
            return issued, config
        spec = planning.TrialSpec.from_config(config)
        issued.append((f"t{n}", spec))
        if complete_search or spec.phase == planning.FINAL:
            searcher.on_trial_complete(f"t{n}", {"val_acc": values(spec), "epoch": spec.run.epochs,
                                                  "test_acc": 60.0})
        n += 1
