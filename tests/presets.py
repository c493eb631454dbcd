"""The tiny sweep preset the end-to-end tests run (the demo backbone on the digits task, CPU only), in one place.

A test names only what it changes: ``tiny_sweep(methods=["alore", "lora"], search={"trials": 3})``; a section
given as a dict is merged into the base section, other values replace it.
"""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "suite": "vtab",
    "data_root": "{workdir}/data/vtab-1k",
    "weights": {"demo": "{workdir}/data/demo.safetensors"},
    "backbones": ["demo"],
    "tasks": ["digits"],
    "methods": ["alore"],
    "search": {"algorithm": "optuna", "trials": 2, "scheduler": "fifo"},
    "space": {"lr": [0.01, 0.005], "weight_decay": [0.001], "dropout": [0.1, 0.0]},
    "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32},
    "final": {"seeds": [42]},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}

SECTIONS = ("search", "train", "final", "resources")  # merged key by key; "space" is replaced whole


def tiny_sweep(**changes: Any) -> dict[str, Any]:
    preset = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key in SECTIONS and isinstance(value, dict):
            preset[key].update(value)
        else:
            preset[key] = copy.deepcopy(value)
    return preset
