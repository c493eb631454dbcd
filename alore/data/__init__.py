"""Benchmark data: VTAB-1k and FGVC in their standard layouts, decoded once.

Typical use (the training loop)::

    cfg = model.pretrained_cfg
    data = load_task(root, "vtab", "cifar", "search", image_size=cfg["input_size"][-1],
                     mean=cfg["mean"], std=cfg["std"], device="cuda")
    for x, y in data.train.batches(64, shuffle=True, generator=g, train_transform=True): ...
    for x, y in data.eval.batches(256): ...
"""

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

__all__ = [
    "CHUNK_SIZE", "DEMO_TASKS", "FGVC_DATASETS", "PROTOCOLS", "SPLITS", "STREAM_THRESHOLD", "SUITES",
    "VTAB_GROUPS", "VTAB_TASKS", "DecodedSplit", "Entry", "Preprocess", "Protocol", "StreamedSplit",
    "TaskData", "TaskInfo", "TaskReport", "center_crop", "check_root", "check_task", "decode_image",
    "demo_pretrain_arrays", "image_base", "iter_chunks", "known_tasks", "load_split", "load_task",
    "open_rgb", "protocol_splits", "random_resized_crop_flip", "read_protocol", "read_split",
    "scan_split", "split_file", "task_info", "write_demo_dataset",
]
