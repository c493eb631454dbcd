"""How often a trial reports to Tune, and how often a report carries a checkpoint: bounded rates, not every
epoch.

At GPU pace a sweep's slots finish an epoch every fraction of a second; a Tune result per epoch, each with
a checkpoint copied into storage, a database update and MLflow metrics, is more than one driver can take
(Ray's guide: ~50-100 results/s with Tune's loggers on). A trial therefore reports

* at the end (always: the final metrics and, for a final run, its files),
* at every rung of ASHA (the only epochs at which the scheduler decides anything), and
* otherwise when ``every_s`` seconds have passed since its last report. ``every_s`` shares a budget of
  :data:`RESULTS_PER_S` results per second among the sweep's slots: 2 slots report every epoch as before,
  64 slots at most every 2.6 s each (a real ViT-B trial of 100 epochs: a report every ~6 epochs).

A checkpoint goes with a report only at the end and once ``checkpoint_s`` has passed since the trial's last
one: :data:`CHECKPOINTS_PER_S` shared among the slots (2 slots: every 0.25 s; 64 slots: every 8 s, what a
failed trial can lose), never more than :data:`REPORT_EVERY_S` apart. ASHA's rungs need the metric alone.
Checkpoints are what costs the driver: each is copied into storage, and Tune saves the whole experiment's
state (every trial of the sweep) whenever one trial has checkpointed ``num_to_keep`` times since the last
save (:func:`alorectl.sweep.experiment.keep_checkpoints`); at 5,814 trials that state is over 100 MB.

Nothing is lost from the curves: each report carries every epoch since the previous one (``history``, a
JSON list), which the driver expands into MLflow's per-epoch metrics. Pure Python (no torch): the
simulated trials of ``alorectl bench scale`` use it too.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any, NamedTuple

RESULTS_PER_S = 25.0     # what the driver is asked to take, all slots together (Tune's own limit is ~50-100/s)
CHECKPOINTS_PER_S = 8.0  # checkpoints per second, all slots together
REPORT_EVERY_S = 60.0    # never longer than this between two checkpoints of a trial (what a failure can lose)
HISTORY = "history"    # the report field that carries the epochs since the previous report


def asha_rungs(epochs: int, grace_period: int, reduction_factor: int = 2) -> tuple[int, ...]:
    """The epochs at which ASHA compares trials (``grace_period · rf^k`` below ``epochs``)."""
    rungs, t = [], grace_period
    while t < epochs:
        rungs.append(t)
        t *= reduction_factor
    return tuple(rungs)


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the experiment hands every trial (plain data: it travels through Ray's object store)."""

    rungs: tuple[int, ...] = ()
    every_s: float = 0.0
    checkpoint_s: float = 0.0

    @classmethod
    def for_sweep(cls, slots: int, rungs: tuple[int, ...] = ()) -> Policy:
        every = min(REPORT_EVERY_S, max(1, slots) / RESULTS_PER_S)
        return cls(tuple(rungs), every, min(REPORT_EVERY_S, max(every, max(1, slots) / CHECKPOINTS_PER_S)))


class Due(NamedTuple):
    report: dict[str, Any]  # the metrics, with every epoch since the previous report (``history``)
    checkpoint: bool        # whether the trial's newest checkpoint goes with it


class Cadence:
    """Collects a trial's epochs and says when to report them."""

    def __init__(self, epochs: int, policy: Policy | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.epochs, self.policy, self.clock = epochs, policy or Policy(), clock
        self.last = self.checkpointed = clock()
        self.pending: list[dict[str, Any]] = []

    def add(self, metrics: dict[str, Any]) -> Due | None:
        """Record an epoch's metrics; what to report now (with the epochs since the last report), or None."""
        self.pending.append({**metrics, "timestamp": time.time()})
        epoch, now = int(metrics["epoch"]), self.clock()
        end = epoch >= self.epochs
        if not (end or epoch in self.policy.rungs or now - self.last >= self.policy.every_s):
            return None
        report = {**metrics, HISTORY: json.dumps(self.pending)}
        checkpoint = end or now - self.checkpointed >= self.policy.checkpoint_s
        self.pending, self.last = [], now
        if checkpoint:
            self.checkpointed = now
        return Due(report, checkpoint)


def expand(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch rows one report stands for (a report without ``history``: itself)."""
    rows = []
    text = result.get(HISTORY)
    if isinstance(text, str):
        try:
            rows = [r for r in json.loads(text) if isinstance(r, dict) and "epoch" in r]
        except json.JSONDecodeError:
            rows = []
    last = {k: v for k, v in result.items() if k != HISTORY}
    return [r for r in rows if int(r["epoch"]) != int(last.get("epoch", -1))] + (
        [last] if "epoch" in last else [])
