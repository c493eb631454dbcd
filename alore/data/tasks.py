"""Task tables: the benchmarks' tasks, their class counts and split protocols.

Numbers are the paper's table 7. VTAB-1k follows the NOAH/SSF/RepAdapter
distribution (``<root>/<task>/{train800,val200,train800val200,test}.txt``),
FGVC follows VPT (``<root>/<dataset>/{train,val,test}.json``).

A task folder in the VTAB layout whose name is not in the tables is still
usable: :func:`task_info` reads its class count off the labels on disk.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import UnknownChoiceError


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """One classification task; sizes are ``None`` where no reference exists."""

    name: str
    num_classes: int
    group: str
    test_size: int | None = None
    train_size: int | None = None
    val_size: int | None = None


@dataclasses.dataclass(frozen=True)
class Protocol:
    """Which splits a run trains on (concatenated) and which one it scores."""

    train: tuple[str, ...]
    eval: str


SUITES = ("vtab", "fgvc")

# Split names per suite, and the file each one lives in.
SPLITS: dict[str, tuple[str, ...]] = {
    "vtab": ("train800", "val200", "train800val200", "test"),
    "fgvc": ("train", "val", "test"),
}
SPLIT_SUFFIX = {"vtab": ".txt", "fgvc": ".json"}

VTAB_GROUPS = ("Natural", "Specialized", "Structured")


def _vtab(name: str, num_classes: int, group: str, test_size: int) -> TaskInfo:
    return TaskInfo(name, num_classes, group, test_size, train_size=800, val_size=200)


VTAB_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        _vtab("cifar", 100, "Natural", 10000),
        _vtab("caltech101", 102, "Natural", 6084),
        _vtab("dtd", 47, "Natural", 1880),
        _vtab("oxford_flowers102", 102, "Natural", 6149),
        _vtab("oxford_iiit_pet", 37, "Natural", 3669),
        _vtab("svhn", 10, "Natural", 26032),
        _vtab("sun397", 397, "Natural", 21750),
        _vtab("patch_camelyon", 2, "Specialized", 32768),
        _vtab("eurosat", 10, "Specialized", 5400),
        _vtab("resisc45", 45, "Specialized", 6300),
        _vtab("diabetic_retinopathy", 5, "Specialized", 42670),
        _vtab("clevr_count", 8, "Structured", 15000),
        _vtab("clevr_dist", 6, "Structured", 15000),
        _vtab("dmlab", 6, "Structured", 22735),
        _vtab("kitti", 4, "Structured", 711),
        _vtab("dsprites_loc", 16, "Structured", 73728),
        _vtab("dsprites_ori", 16, "Structured", 73728),
        _vtab("smallnorb_azi", 18, "Structured", 12150),
        _vtab("smallnorb_ele", 9, "Structured", 12150),
    )
}

# VPT's random train/val splits (marked * in table 7); sizes are informative only.
FGVC_DATASETS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("cub", 200, "FGVC", 5794, 5394, 600),
        TaskInfo("nabirds", 555, "FGVC", 24633, 21536, 2393),
        TaskInfo("oxford_flowers", 102, "FGVC", 6149, 1020, 1020),
        TaskInfo("stanford_dogs", 120, "FGVC", 8580, 10800, 1200),
        TaskInfo("stanford_cars", 196, "FGVC", 8041, 7329, 815),
    )
}

# The demo dataset (alore.data.demo) in the VTAB layout. Sizes are smaller than
# VTAB's because sklearn's digits has 1797 images; see demo.py for the split.
DEMO_SIZES = {"train800": 640, "val200": 160, "test": 400}
DEMO_TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("digits", 10, "Natural", 400, 640, 160),
        TaskInfo("digits_rot", 4, "Structured", 400, 640, 160),
        TaskInfo("digits_loc", 4, "Structured", 400, 640, 160),
    )
}

PROTOCOLS: dict[str, dict[str, Protocol]] = {
    "search": {"vtab": Protocol(("train800",), "val200"), "fgvc": Protocol(("train",), "val")},
    "final": {"vtab": Protocol(("train800val200",), "test"), "fgvc": Protocol(("train", "val"), "test")},
}


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise UnknownChoiceError("suite", suite, SUITES)
    return suite


def protocol_splits(suite: str, protocol: str) -> Protocol:
    """The train/eval split names of ``protocol`` ("search" or "final") for ``suite``."""
    check_suite(suite)
    if protocol not in PROTOCOLS:
        raise UnknownChoiceError("protocol", protocol, PROTOCOLS)
    return PROTOCOLS[protocol][suite]


def known_tasks(suite: str) -> dict[str, TaskInfo]:
    """Tasks whose class counts are fixed by a table (demo tasks count as VTAB)."""
    check_suite(suite)
    return {**VTAB_TASKS, **DEMO_TASKS} if suite == "vtab" else dict(FGVC_DATASETS)


def split_file(root: Path, suite: str, task: str, split: str) -> Path:
    return Path(root) / task / f"{split}{SPLIT_SUFFIX[suite]}"


def task_folders(root: Path, suite: str) -> list[str]:
    """Sub-folders of ``root`` holding at least one split file of ``suite``."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and any(split_file(root, suite, d.name, s).is_file() for s in SPLITS[suite])
    )
