"""``alorectl bench sweep``: one multi-cell demo sweep on 1 and on 2 trial slots, measured in one run.

Per run: the makespan (first trial start to last trial end: Ray and store start-up are paid once per
sweep and would hide the scaling), slot occupancy = Σ trial wall time / (slots × makespan), the share
of a trial's wall time spent outside training (process start-up, model build, data decoding,
reporting, checkpointing; training time is what :func:`alore.train.fit` measured inside the epochs),
and the speedup of 2 slots over 1. Wall times are the driver's, from Tune's trial start to its end.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from alore.data import write_demo_dataset
from alore.demo_backbone import write_demo_weights

from alorectl.sweep.preset import Preset
from alorectl.sweep.driver import Hooks, Settings, run_sweep
from alorectl.sweep.timing import timing


def bench_preset(data: Path, tasks: list[str], methods: list[str], trials: int, epochs: int) -> Preset:
    return Preset(name="bench", suite="vtab", data_root=str(data / "vtab-1k"), backbones=["demo"], tasks=tasks,
                  methods=methods, algorithm="optuna", trials=trials, scheduler="fifo",
                  space={"lr": [0.05, 0.01, 0.005, 0.001], "weight_decay": [0.01, 0.001]},
                  epochs=epochs, warmup_epochs=min(1, epochs), weights={"demo": str(data / "demo.safetensors")},
                  cpus_per_trial=1)


def measure(preset: Preset, workdir: Path, slots: int) -> dict[str, Any]:
    outcomes: list[Any] = []
    run_sweep(preset, Settings.embedded(f"bench-{slots}", workdir, max_concurrent=slots),
              Hooks(on_trial_done=outcomes.append))
    t = timing(outcomes, slots, len(outcomes))
    walls = [(o.finished_at - o.started_at).total_seconds() for o in outcomes]
    outside = [max(0.0, 1.0 - float(o.metrics.get("train_seconds", 0.0)) / w) for o, w in zip(outcomes, walls) if w > 0]
    return {"slots": slots, "trials": len(outcomes), "makespan_s": t.span_s, "occupancy": t.occupancy,
            "mean_trial_wall_s": statistics.fmean(walls), "overhead_share": statistics.fmean(outside)}


def bench_sweep(tasks: list[str], methods: list[str], trials: int = 2, epochs: int = 3,
                data: Path | None = None) -> list[dict[str, Any]]:
    import ray

    with tempfile.TemporaryDirectory(prefix="alore-bench-") as tmp:
        root = Path(tmp)
        if data is None:
            data = root / "data"
            write_demo_dataset(data)
            write_demo_weights(data)
        rows = []
        for slots in (1, 2):
            rows.append(measure(bench_preset(data, tasks, methods, trials, epochs), root / f"s{slots}", slots))
            ray.shutdown()  # a fresh Ray per run: the second run must not inherit warm workers
    for r in rows:
        r["speedup"] = rows[0]["makespan_s"] / r["makespan_s"]
    return rows
