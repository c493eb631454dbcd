"""Benchmark data: VTAB-1k and FGVC in their standard layouts, decoded once.

Typical use (the training loop)::

    cfg = model.pretrained_cfg
    data = load_task(root, "vtab", "cifar", "search", image_size=cfg["input_size"][-1],
                     mean=cfg["mean"], std=cfg["std"], device="cuda")
    for x, y in data.train.batches(64, shuffle=True, generator=g, train_transform=True): ...
    for x, y in data.eval.batches(256): ...

The names are imported on first use (PEP 562): the task tables (``alore.data.tasks``: suites, task names,
groups) need neither torch nor PIL, so the platform's quick commands stay quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "TaskReport": ".check",
    "check_root": ".check",
    "check_task": ".check",
    "CHUNK_SIZE": ".decoded",
    "STREAM_THRESHOLD": ".decoded",
    "DecodedSplit": ".decoded",
    "Preprocess": ".decoded",
    "StreamedSplit": ".decoded",
    "TaskData": ".decoded",
    "center_crop": ".decoded",
    "decode_image": ".decoded",
    "iter_chunks": ".decoded",
    "load_split": ".decoded",
    "load_task": ".decoded",
    "open_rgb": ".decoded",
    "random_resized_crop_flip": ".decoded",
    "demo_pretrain_arrays": ".demo",
    "write_demo_dataset": ".demo",
    "Entry": ".splits",
    "image_base": ".splits",
    "read_protocol": ".splits",
    "read_split": ".splits",
    "scan_split": ".splits",
    "task_info": ".splits",
    "DEMO_TASKS": ".tasks",
    "FGVC_DATASETS": ".tasks",
    "PROTOCOLS": ".tasks",
    "SPLITS": ".tasks",
    "SUITES": ".tasks",
    "VTAB_GROUPS": ".tasks",
    "VTAB_TASKS": ".tasks",
    "Protocol": ".tasks",
    "TaskInfo": ".tasks",
    "known_tasks": ".tasks",
    "protocol_splits": ".tasks",
    "split_file": ".tasks",
}

__all__ = [
    "CHUNK_SIZE", "DEMO_TASKS", "FGVC_DATASETS", "PROTOCOLS", "SPLITS", "STREAM_THRESHOLD", "SUITES",
    "VTAB_GROUPS", "VTAB_TASKS", "DecodedSplit", "Entry", "Preprocess", "Protocol", "StreamedSplit",
    "TaskData", "TaskInfo", "TaskReport", "center_crop", "check_root", "check_task", "decode_image",
    "demo_pretrain_arrays", "image_base", "iter_chunks", "known_tasks", "load_split", "load_task",
    "open_rgb", "protocol_splits", "random_resized_crop_flip", "read_protocol", "read_split",
    "scan_split", "split_file", "task_info", "write_demo_dataset",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .check import TaskReport, check_root, check_task
    from .decoded import (
        CHUNK_SIZE,
        STREAM_THRESHOLD,
        DecodedSplit,
        Preprocess,
        StreamedSplit,
        TaskData,
        center_crop,
        decode_image,
        iter_chunks,
        load_split,
        load_task,
        open_rgb,
        random_resized_crop_flip,
    )
    from .demo import demo_pretrain_arrays, write_demo_dataset
    from .splits import Entry, image_base, read_protocol, read_split, scan_split, task_info
    from .tasks import (
        DEMO_TASKS,
        FGVC_DATASETS,
        PROTOCOLS,
        SPLITS,
        SUITES,
        VTAB_GROUPS,
        VTAB_TASKS,
        Protocol,
        TaskInfo,
        known_tasks,
        protocol_splits,
        split_file,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'alore.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
