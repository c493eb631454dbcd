"""``alorectl bench sweep``: the same small sweep with 1 and with 2 concurrent trials.

Prints trials/hour (first trial start to last trial end) and the share of each trial's wall time spent outside training
(process start-up, model build, data decoding, reporting, checkpointing), all
measured in one run. Wall time per trial is taken in the driver, from Tune's
trial start to its completion; training time is what :func:`alore.train.fit`
measured inside the epochs (``train_seconds``).
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from alore.data import write_demo_dataset
from alore.demo_backbone import write_demo_weights

from .preset import Preset
from .sweep import Hooks, Settings, run_sweep


def bench_preset(data: Path, trials: int, epochs: int, method: str, concurrent: int) -> Preset:
    return Preset(name="bench", suite="vtab", data_root=str(data / "vtab-1k"), backbones=["demo"], tasks=["digits"],
                  methods=[method], algorithm="grid", trials=1, scheduler="fifo",
                  space={"lr": [0.05, 0.01, 0.005, 0.001][:max(1, trials)], "weight_decay": [0.001]},
                  epochs=epochs, warmup_epochs=min(1, epochs), weights={"demo": str(data / "demo.safetensors")},
                  cpus_per_trial=1, max_concurrent=concurrent)


def measure(preset: Preset, workdir: Path) -> dict[str, Any]:
    starts: dict[str, float] = {}
    ends: list[float] = []
    walls: list[float] = []
    overhead: list[float] = []

    def started(cell: Any, trial: Any) -> None:
        starts[trial.trial_id] = time.perf_counter()

    def done(cell: Any, trial: Any, ok: bool) -> None:
        ends.append(time.perf_counter())
        wall = ends[-1] - starts.get(trial.trial_id, ends[-1])
        train = float((trial.last_result or {}).get("train_seconds", 0.0))
        walls.append(wall)
        if wall > 0:
            overhead.append(max(0.0, 1.0 - train / wall))

    run_sweep(preset, Settings.embedded(f"bench-{preset.max_concurrent}", workdir),
              Hooks(on_trial_start=started, on_trial_done=done))
    # From the first trial's start to the last one's end: Ray and store start-up are paid once per sweep,
    # not per trial, and would hide the scaling.
    elapsed = max(ends) - min(starts.values())
    return {"concurrent": preset.max_concurrent, "trials": len(walls), "seconds": elapsed,
            "trials_per_hour": 3600 * len(walls) / elapsed, "mean_trial_wall_s": statistics.fmean(walls),
            "overhead_share": statistics.fmean(overhead)}


def bench_sweep(trials: int = 4, epochs: int = 3, method: str = "alore", workdir: Path | None = None) -> list[dict]:
    import ray

    with tempfile.TemporaryDirectory(prefix="alore-bench-") as tmp:
        root = Path(workdir or tmp)
        write_demo_dataset(root / "data")
        write_demo_weights(root / "data")
        rows = []
        for concurrent in (1, 2):
            preset = bench_preset(root / "data", trials, epochs, method, concurrent)
            rows.append(measure(dataclasses.replace(preset), root / f"c{concurrent}"))
        ray.shutdown()
    base = rows[0]["trials_per_hour"]
    for r in rows:
        r["speedup"] = r["trials_per_hour"] / base
    return rows
