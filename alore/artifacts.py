"""A finished run's files: adapter weights, checked merged weights, metrics (all safetensors/JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .api import adapter_state_dict, merge, merge_error, save_weights
from .errors import AloreError
from .methods import get_method

MERGE_TOLERANCE = 1e-4  # relative error of merged vs adapted outputs, float32

ADAPTER, MERGED, METRICS = "adapter.safetensors", "merged.safetensors", "metrics.json"


def write_run_files(out: Path, metrics: dict[str, Any], model: nn.Module, data: Any) -> dict[str, Path]:
    """Write ``adapter.safetensors``, ``merged.safetensors`` (mergeable methods, after checking it on real
    images) and ``metrics.json`` into ``out``; ``metrics`` gains ``merge_relative_error``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"backbone": model.alore_backbone, "method": model.alore_method, "task": metrics.get("task"),
            "num_classes": metrics.get("num_classes")}
    files = {"adapter": save_weights(adapter_state_dict(model), out / ADAPTER, meta)}
    if get_method(model.alore_method["name"]).mergeable:
        plain = merge(model)
        x, _ = next(iter(data.eval.batches(8)))
        model.float(), plain.float()
        err = merge_error(model, plain, x.float())
        metrics["merge_relative_error"] = err
        if not err <= MERGE_TOLERANCE:
            raise AloreError(f"merged weights disagree with the adapted model (relative error {err:.2e} > "
                             f"{MERGE_TOLERANCE}); {MERGED} not written")
        files["merged"] = save_weights(plain.state_dict(), out / MERGED, meta)
    tmp = out / (METRICS + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    files["metrics"] = tmp.replace(out / METRICS)
    return files
