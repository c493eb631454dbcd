"""Validate a benchmark root before a sweep spends GPU hours on it.

Per task: split files present and well-formed, labels in range, split sizes
as the benchmark defines them, ``train800val200 == train800 ∪ val200`` (VTAB),
no image shared between training and evaluation splits, every image file
present (a stat each), and one image per split decodes (``decode_all`` for
every image). Task folders the tables do not know are checked for internal
consistency only. Problems are one line each and name the file and the line.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import AloreError, DataError, UnknownChoiceError
from .decoded import default_workers, open_rgb
from .splits import Entry, map_class_ids, require_root, scan_split
from .tasks import SPLIT_SUFFIX, SPLITS, TaskInfo, check_suite, known_tasks, split_file, task_folders

MAX_PER_KIND = 10  # problems of one kind listed per task before "... and N more"


@dataclasses.dataclass
class TaskReport:
    """The outcome of checking one task folder."""

    task: str
    suite: str
    group: str
    num_classes: int | None
    sizes: dict[str, int | None]  # entries per split; None where the file is missing
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # worth knowing, not wrong

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        return "ok" if self.ok else "problem"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "status": self.status}

    def add(self, problems: Iterable[str], what: str = "problems of this kind") -> None:
        problems = list(problems)
        self.problems.extend(problems[:MAX_PER_KIND])
        if len(problems) > MAX_PER_KIND:
            self.problems.append(f"... and {len(problems) - MAX_PER_KIND} more {what}")


def check_root(
    root: Path, suite: str = "vtab", tasks: Iterable[str] | None = None, *,
    decode_all: bool = False, workers: int | None = None,
) -> list[TaskReport]:
    """Check every task folder under ``root`` (or only ``tasks``); a missing root is a DataError."""
    check_suite(suite)
    root = require_root(root)
    known = known_tasks(suite)
    on_disk = task_folders(root, suite)
    if tasks is None:
        names = [t for t in known if (root / t).is_dir()]
        names += [t for t in on_disk if t not in known]
        if not names:
            first = SPLITS[suite][0] + SPLIT_SUFFIX[suite]
            raise DataError(f"{root}: no {suite} task folders found (expected <root>/<task>/{first})")
    else:
        names = list(dict.fromkeys(tasks))
        for name in names:
            if name not in known and not (root / name).is_dir():
                raise UnknownChoiceError("task", name, set(known) | set(on_disk), f"(nor a folder under {root})")
    return [check_task(root, suite, name, decode_all=decode_all, workers=workers) for name in names]


def check_task(
    root: Path, suite: str, task: str, *, decode_all: bool = False, workers: int | None = None
) -> TaskReport:
    """Check one task folder; never raises for bad data, every problem goes in the report."""
    root = Path(os.path.abspath(root))
    info = known_tasks(suite).get(task)
    report = TaskReport(
        task, suite, info.group if info else "Custom", info.num_classes if info else None,
        {s: None for s in SPLITS[suite]},
    )
    folder = root / task
    if not folder.is_dir():
        report.problems.append(f"{folder}: task folder missing")
        return report

    files = {s: split_file(root, suite, task, s) for s in SPLITS[suite]}
    entries: dict[str, list[Entry]] = {}
    for split, file in files.items():
        found, problems = scan_split(root, suite, task, split)
        report.add(problems, f"problems in {file.name}")
        entries[split] = found
        if file.is_file():
            report.sizes[split] = len(found)

    entries = _check_labels(report, files, entries)
    _check_sizes(report, files, info)
    _check_disjoint(report, files, entries)
    _check_images(report, files, entries, decode_all, workers)
    return report


def _check_labels(
    report: TaskReport, files: dict[str, Path], entries: dict[str, list[Entry]]
) -> dict[str, list[Entry]]:
    """Fill ``report.num_classes`` and flag labels out of range; returns FGVC entries mapped to 0..K-1."""
    if report.suite == "fgvc":
        class_ids = sorted({e.label for e in entries["train"]})
        if not class_ids:
            return entries
        if report.num_classes is not None and len(class_ids) != report.num_classes:
            report.problems.append(
                f"{files['train']}: {len(class_ids)} distinct class ids, "
                f"expected {report.num_classes} for {report.task}"
            )
        report.num_classes = report.num_classes or len(class_ids)
        mapped = {}
        for split, found in entries.items():
            mapped[split], problems = map_class_ids(found, class_ids, files[split])
            report.add(problems, f"unknown class ids in {files[split].name}")
        return mapped

    labels = [e.label for found in entries.values() for e in found]
    if report.num_classes is None:  # a task folder the tables do not know: infer
        if labels:
            report.num_classes = max(labels) + 1
            train = {e.label for s in ("train800", "val200", "train800val200") for e in entries[s]}
            unseen = sorted(set(range(report.num_classes)) - train)
            if unseen:
                report.notes.append(f"classes never seen in training: {_sample(unseen)}")
        return entries
    for split, found in entries.items():
        k = report.num_classes
        report.add(
            (f"{files[split]} {e.where}: label {e.label} out of range [0, {k}) for {report.task}"
             for e in found if e.label >= k),
            f"labels out of range in {files[split].name}",
        )
    return entries


def _check_sizes(report: TaskReport, files: dict[str, Path], info: TaskInfo | None) -> None:
    if info is None:
        return
    if report.suite == "vtab":
        expected = {
            "train800": info.train_size, "val200": info.val_size, "test": info.test_size,
            "train800val200": info.train_size + info.val_size if info.train_size and info.val_size else None,
        }
    else:
        expected = {"train": info.train_size, "val": info.val_size, "test": info.test_size}
    for split, size in report.sizes.items():
        want = expected.get(split)
        if size is None or want is None or size == want:
            continue
        message = f"{files[split]}: {size} entries, expected {want}"
        # VPT's FGVC train/val splits are random: other splits are legitimate.
        (report.notes if report.suite == "fgvc" else report.problems).append(message)


def _check_disjoint(report: TaskReport, files: dict[str, Path], entries: dict[str, list[Entry]]) -> None:
    def paths(*splits: str) -> set[Path]:
        return {e.path for s in splits for e in entries[s]}

    if report.suite == "vtab":
        parts = ("train800", "val200", "train800val200")
        if all(report.sizes[s] is not None for s in parts):
            union = Counter((e.path, e.label) for s in parts[:2] for e in entries[s])
            merged = Counter((e.path, e.label) for e in entries["train800val200"])
            extra, missing = merged - union, union - merged
            if extra or missing:
                example = next(iter(extra or missing))[0]
                report.problems.append(
                    f"{files['train800val200']}: not train800 + val200 ({sum(extra.values())} entries only here, "
                    f"{sum(missing.values())} missing), e.g. {example}"
                )
        pairs = [("train800", "val200"), ("train800val200", "test")]
    else:
        pairs = [("train", "val"), ("train", "test"), ("val", "test")]
    for a, b in pairs:
        shared = paths(a) & paths(b)
        if shared:
            report.problems.append(
                f"{len(shared)} images in both {files[a].name} and {files[b].name}, e.g. {min(shared)}"
            )


def _check_images(
    report: TaskReport, files: dict[str, Path], entries: dict[str, list[Entry]], decode_all: bool,
    workers: int | None,
) -> None:
    first_seen: dict[Path, str] = {}  # image → where it is first listed, for messages
    for split, found in entries.items():
        for e in found:
            first_seen.setdefault(e.path, f"{files[split].name} {e.where}")
    missing = [p for p in first_seen if not os.path.isfile(p)]
    report.add((f"{p}: image file missing ({first_seen[p]})" for p in missing), "missing image files")

    absent = set(missing)
    if decode_all:
        sample = [p for p in first_seen if p not in absent]
    else:  # one image per split: catches a wrong format or a broken copy cheaply
        sample = list(dict.fromkeys(
            next((e.path for e in found if e.path not in absent), None) for found in entries.values()
        ))
        sample = [p for p in sample if p is not None]

    def try_decode(path: Path) -> str | None:
        try:
            open_rgb(path)
        except AloreError as err:
            return f"{err} ({first_seen[path]})"
        return None

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        failures = [m for m in pool.map(try_decode, sample) if m]
    report.add(failures, "images that do not decode")


def _sample(values: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
