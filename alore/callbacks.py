"""The hooks :func:`alore.train.fit` calls: a plain class (no torch import), so that the CLI's progress bar and
the sweep's Tune reporter can subclass it without loading the training stack."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


class Callbacks:
    """Hooks the CLI (progress bar) and the sweep (Ray Tune reports) implement."""

    def on_start(self, model: nn.Module, data: Any) -> None:
        """Once the model is built and the data decoded, before the first step."""

    def on_data(self, done: int, total: int) -> None:
        """Images decoded so far (only the first pass decodes)."""

    def on_step(self, epoch: int, step: int, steps: int, stats: dict[str, float]) -> None:
        """After each optimizer step; ``stats`` has loss, acc (running, percent), images_per_s, lr."""

    def on_epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """After each epoch, once its checkpoint (if any) is on disk."""
