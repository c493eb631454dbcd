"""The simulated trial body of ``alorectl bench scale``: everything a real trial does except the training.

Selected by the internal setting ``ALORE_SIMULATE`` (the path of a JSON *simulation table* that the
benchmark writes into its work folder), read by :func:`alorectl.sweep.experiment.trial_body`. It is not a
user-facing option of ``alorectl sweep``: a sweep run with it is recorded as simulated (the sweep row, its
config, its MLflow runs), and its results never reach the leaderboard of real results or an export.

A simulated trial of backbone ``b`` takes ``trial_seconds × cost(b)`` (the plan's cost model: ViT-B = 1)
spread over its epochs, sleeping where the GPU would compute. Per epoch it reports what
:func:`alore.train.fit` reports (same metric names) through the same :mod:`~alorectl.sweep.cadence`, and
a report that the cadence checkpoints carries a checkpoint of the real size (trainable parameters + AdamW's
two moments, float32, counted by the benchmark on the meta device). A final run's last checkpoint holds ``adapter.safetensors``
of the real size, ``metrics.json`` and a small stand-in ``merged.safetensors`` (marked as such). Its
accuracies are a deterministic function of the hyper-parameters, the task and the epoch, so that TPE, ASHA,
selection and the leaderboard have something to act on.

This module imports neither torch nor alore (nor the planning code, which does): 64 simulated trial
workers must fit in a small machine's memory. It appends each epoch's busy interval to a ledger file per
trial (``<ledger>/<trial folder>.jsonl``), from which the benchmark computes occupancy and lost work.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from alorectl import scratch

ENV = "ALORE_SIMULATE"  # internal: the simulation table's path; set by `alorectl bench scale` only
STATE = "state.json"    # the simulated checkpoint's own state (epoch); checkpoint.pt holds its size in bytes


def table() -> dict[str, Any] | None:
    """The simulation table named by ``ALORE_SIMULATE``, or None for a real sweep."""
    path = os.environ.get(ENV)
    if not path:
        return None
    data = json.loads(Path(path).read_text())
    if data.get("kind") != "alore-simulation":
        raise ValueError(f"{ENV}={path} is not a simulation table of alorectl bench scale")
    return data


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    return zlib.crc32(json.dumps(parts, sort_keys=True, default=str).encode()) / 2**32


def accuracy(task: str, method: str, params: dict[str, Any], epoch: int, epochs: int, seed: int,
             split: str) -> float:
    """Synthetic top-1 accuracy (%): a task's ceiling, a method's offset, a smooth optimum in the searched
    learning rate and weight decay, a saturating learning curve, and a little seeded noise."""
    ceiling = 55.0 + 40.0 * _unit("task", task)
    method_gain = 4.0 * _unit("method", method) - 2.0
    lr = float(params.get("lr", 0.005))
    wd = float(params.get("weight_decay", 0.001))
    best_lr = 10 ** (-3.0 + 1.5 * _unit("lr", task, method))  # 0.001 .. 0.03
    fit = -3.0 * math.log10(lr / best_lr) ** 2 - 2.0 * abs(math.log10(wd + 1e-4) + 2.5) / 2.5
    fit += 1.0 * float(params.get("dropout", 0.0) or 0.0) * (_unit("do", task) - 0.5)
    curve = 1.0 - math.exp(-4.0 * epoch / max(1, epochs))
    noise = 0.6 * (_unit(split, task, method, sorted(params.items()), seed, epoch) - 0.5)
    return max(0.0, min(100.0, (ceiling + method_gain + fit) * curve + noise))


def _write_safetensors(path: Path, nbytes: int, metadata: dict[str, str]) -> None:
    """A valid safetensors file holding one uint8 tensor of ``nbytes`` zeros (written without torch)."""
    header = json.dumps({"__metadata__": metadata,
                         "simulated": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        _zeros(f, nbytes)


def _zeros(f: Any, nbytes: int, chunk: int = 1 << 22) -> None:
    block = bytes(min(chunk, nbytes))
    while nbytes > 0:
        n = min(chunk, nbytes)
        f.write(block[:n])
        nbytes -= n


def run_simulated(config: dict[str, Any], cadence: Any = None, sim: dict[str, Any] | None = None) -> None:
    """The Tune trainable (function API), bound by ``tune.with_parameters`` like the real one."""
    import ray
    from ray import tune

    from alorectl.sweep.cadence import Cadence  # pure Python, no torch

    sim = sim or {}
    spec = config["spec"]
    cell, run, params = spec["cell"], spec["run"], dict(spec["params"])
    backbone, task, method = cell["backbone"], cell["task"], cell["method"]
    phase, seed, epochs = spec["phase"], int(spec["seed"]), int(run["epochs"])
    key = f"search-{int(spec['index']):02d}" if phase == "search" else f"final-s{seed}"
    dirname = f"{backbone}__{task}__{method}__{key}"
    per_epoch = float(sim.get("trial_seconds", 1.0)) * float(sim.get("cost", {}).get(backbone, 1.0)) / epochs
    sizes = sim.get("sizes", {}).get(f"{backbone}/{method}", {})
    trainable = int(sizes.get("trainable", 0))            # the paper's count (no head)
    state_bytes = int(sizes.get("state_bytes", 1024))      # trainable tensors + AdamW moments, float32
    adapter_bytes = int(sizes.get("adapter_bytes", 1024))
    node_id = ray.get_runtime_context().get_node_id()
    ledger = Path(sim["ledger"]) / f"{dirname}.jsonl" if sim.get("ledger") else None

    start_epoch, history = 0, []
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retried trial continues from its last checkpoint
        with checkpoint.as_directory() as d:
            state = json.loads((Path(d) / STATE).read_text())
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
    score = "val_acc" if phase == "search" else "test_acc"
    steps = max(1, math.ceil(800 / int(run.get("batch_size", 32))))
    reporter = Cadence(epochs, cadence)
    attempt = f"{os.getpid()}-{time.time_ns()}"
    with scratch.folder("sim") as work:
        ckpt = Path(work) / "ckpt"
        ckpt.mkdir()
        for epoch in range(start_epoch, epochs):
            t0 = time.time()
            time.sleep(per_epoch)  # where the GPU would train and evaluate
            t1 = time.time()
            e = epoch + 1
            acc = accuracy(task, method, params, e, epochs, seed, "val" if phase == "search" else "test")
            metrics: dict[str, Any] = {
                "epoch": e, "train_loss": 2.0 * math.exp(-3.0 * e / epochs) + 0.05,
                "train_acc": min(100.0, acc + 8.0), "lr": float(params.get("lr", 0.001)) * 0.5 * (
                    1 + math.cos(math.pi * e / epochs)), "images_per_s": 800 / max(1e-9, per_epoch)}
            if phase == "search" or e == epochs:  # what fit() evaluates: val200 every epoch, test at the end
                metrics[score] = acc
            metrics["epoch_seconds"] = t1 - t0
            metrics["train_seconds"] = sum(h["epoch_seconds"] for h in history) + metrics["epoch_seconds"]
            history.append({k: metrics[k] for k in ("epoch", "epoch_seconds")})
            metrics.update(node_id=node_id, trainable_params=trainable, simulated=1)
            if ledger is not None:
                with open(ledger, "a") as f:
                    f.write(json.dumps({"epoch": e, "start": t0, "end": t1, "attempt": attempt, "steps": steps,
                                        "torch": "torch" in sys.modules}) + "\n")
            due = reporter.add(metrics)
            if due is None:
                continue
            if not due.checkpoint:
                tune.report(due.report)
                continue
            with open(ckpt / "checkpoint.pt", "wb") as f:  # the real checkpoint's size; nothing in it
                _zeros(f, state_bytes)
            (ckpt / STATE).write_text(json.dumps({"epoch": e, "history": history}))
            if phase == "final" and e == epochs:
                meta = {"backbone": backbone, "method": method, "task": task, "simulated": "true"}
                _write_safetensors(ckpt / "adapter.safetensors", adapter_bytes, meta)
                # A stand-in: a simulated run has no merged backbone weights to write.
                _write_safetensors(ckpt / "merged.safetensors", 8, {**meta, "stand_in": "true"})
                summary = {k: v for k, v in metrics.items() if k != "node_id"}
                summary.update(task=task, protocol="final", seed=seed, simulated=True,
                               note="simulated run (alorectl bench scale): stand-in weights, synthetic accuracy")
                (ckpt / "metrics.json").write_text(json.dumps(summary, indent=2))
            tune.report(due.report, checkpoint=tune.Checkpoint.from_directory(str(ckpt)))
