"""What a Ray Tune trial runs: :func:`alore.train.fit`, reporting at a bounded rate (:mod:`alorectl.sweep.cadence`:
ASHA's rungs, every few seconds, and the end), with a checkpoint at a lower one and at the end.

A trial gets everything in its config (never the CLI's state, never the
database). It resumes from ``tune.get_checkpoint()`` after a failure, and leaves
its files in Tune's storage: a final-protocol trial writes its adapter, merged
weights and metrics into its last checkpoint, which the driver then logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray
from ray import tune

from alore.api import count_trainable
from alore.artifacts import write_run_files
from alore.train import Callbacks, TrainConfig, fit
from alorectl import scratch

from .cadence import Cadence, Policy
from .plan import TrialSpec


def train_config(config: dict[str, Any]) -> TrainConfig:
    """The trial's training run, decoded from Tune's config by the plan's one decoder."""
    return TrainConfig(**TrialSpec.from_config(config).train_kwargs())


class TuneReporter(Callbacks):
    def __init__(self, config: TrainConfig, cadence: Policy | None = None) -> None:
        self.config = config
        self.cadence = Cadence(config.epochs, cadence)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.model = self.data = None

    def on_start(self, model: Any, data: Any) -> None:
        self.model, self.data = model, data
        self.params = count_trainable(model)

    def on_epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        report = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        report.update(node_id=self.node_id, trainable_params=self.params)
        if metrics["epoch"] == self.config.epochs and self.config.protocol == "final":
            # The last checkpoint carries the run's files: they persist in Tune's storage.
            summary = {**report, "task": self.config.task, "num_classes": self.data.num_classes,
                       "protocol": "final", "seed": self.config.seed}
            write_run_files(checkpoint_dir, summary, self.model, self.data)
        due = self.cadence.add(report)
        if due is not None:  # fit() keeps the newest epoch's checkpoint in checkpoint_dir between reports
            tune.report(due.report, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir))
                        if due.checkpoint else None)


def run_trial(config: dict[str, Any], cadence: Policy | None = None) -> None:
    """The Tune trainable (function API); ``cadence`` (bound by ``tune.with_parameters``): when to report."""
    cfg = train_config(config)
    with scratch.folder("trial") as work:  # a SIGKILLed trial's is removed by a later one
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retried trial continues from its last epoch
            resume = checkpoint.to_directory(str(Path(work) / "resume"))
        fit(cfg, TuneReporter(cfg, cadence), checkpoint_dir=Path(work) / "ckpt", resume_from=resume)
