"""A finished run's files: adapter weights, checked merged weights, metrics (all safetensors/JSON)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from .api import adapter_state_dict, merge, merge_error, save_weights
from . import state as alore_state
from .errors import AloreError
from .files import write_text
from .methods import get_method

MERGE_TOLERANCE = 1e-4  # relative error of merged vs adapted outputs, float32

ADAPTER, MERGED, METRICS = "adapter.safetensors", "merged.safetensors", "metrics.json"


def write_run_files(out: Path, metrics: dict[str, Any], model: nn.Module, data: Any) -> dict[str, Path]:
    """Write ``adapter.safetensors``, ``merged.safetensors`` (mergeable methods, after checking it on real
    images) and ``metrics.json`` into ``out``; ``metrics`` gains ``merge_relative_error``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = alore_state.of(model)
    meta = {"backbone": dataclasses.asdict(state.backbone), "method": state.method_info(), "task": metrics.get("task"),
            "num_classes": metrics.get("num_classes")}
    files = {"adapter": save_weights(adapter_state_dict(model), out / ADAPTER, meta)}
    if get_method(state.method).mergeable:
        plain = merge(model)
        x, _ = next(iter(data.eval.batches(8)))
        model.float(), plain.float()
        err = merge_error(model, plain, x.float())
        metrics["merge_relative_error"] = err
        if not err <= MERGE_TOLERANCE:
            raise AloreError(f"merged weights disagree with the adapted model (relative error {err:.2e} > "
                             f"{MERGE_TOLERANCE}); {MERGED} not written")
        files["merged"] = save_weights(plain.state_dict(), out / MERGED, meta)
    files["metrics"] = write_text(out / METRICS, json.dumps(metrics, indent=2))
    return files
