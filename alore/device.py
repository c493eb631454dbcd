"""Device and precision: CUDA with bf16 autocast when there is a GPU, float32 on the CPU (paper recipe)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from .errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} is not available here; valid choices: auto, cpu")
    return torch.device(name)


def autocast_for(device: torch.device) -> Callable[[], Any]:
    """A factory of autocast contexts: bf16 on CUDA, none on the CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext
