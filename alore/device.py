"""Device and precision: CUDA with bf16 autocast when there is a GPU, float32 on the CPU (paper recipe)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from .errors import ConfigError


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is a one-line ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}; valid choices: {DEVICE_CHOICES}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r} is not available here (no CUDA GPU); valid choices: auto, cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} is not available here; valid choices: auto, cpu, "
                              + ", ".join(f"cuda:{i}" for i in range(count)))
    return device


def autocast_for(device: torch.device) -> Callable[[], Any]:
    """A factory of autocast contexts: bf16 on CUDA, none on the CPU."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext
