"""What a Ray Tune trial runs: :func:`alore.train.fit`, reporting every epoch with a checkpoint.

A trial gets everything in its config (never the CLI's state, never the
database). It resumes from ``tune.get_checkpoint()`` after a failure, and leaves
its files in Tune's storage: a final-protocol trial writes its adapter, merged
weights and metrics into its last checkpoint, which the driver then logs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from alore.api import count_trainable
from alore.artifacts import write_run_files
from alore.train import Callbacks, TrainConfig, fit

# Trial config keys searched or set per trial; everything else sits in config["base"].
TRIAL_KEYS = ("lr", "weight_decay", "dropout", "protocol", "seed")


def train_config(config: dict[str, Any]) -> TrainConfig:
    options = {**config["base"].get("method_options", {}), **config.get("method_options", {})}
    base = {k: v for k, v in config["base"].items() if k != "method_options"}
    return TrainConfig(**base, method_options=options, **{k: config[k] for k in TRIAL_KEYS if k in config})


class TuneReporter(Callbacks):
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
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
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable (function API)."""
    cfg = train_config(config)
    with tempfile.TemporaryDirectory(prefix="alore-trial-") as work:
        resume = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:  # a retried trial continues from its last epoch
            resume = checkpoint.to_directory(str(Path(work) / "resume"))
        fit(cfg, TuneReporter(cfg), checkpoint_dir=Path(work) / "ckpt", resume_from=resume)
