"""Split files → ``list[(image path, label)]``, with one-line error messages.

VTAB-1k (NOAH layout): ``<root>/<task>/<split>.txt``, one ``relative/path label``
per line, paths relative to ``<root>/<task>/``.

FGVC (VPT layout): ``<root>/<dataset>/<split>.json`` mapping relative path to a
class id, paths relative to ``<root>/<dataset>/images/`` (``Images/`` for
Stanford Dogs) when that folder exists, else to ``<root>/<dataset>/``. As in
VPT, class ids need not be contiguous (NABirds' are not): they are mapped to
``0..K-1`` in sorted order, here of the ids in ``train.json`` so that every
split agrees on the mapping.

Every problem names the file and the line (or JSON entry). A path that leaves
the dataset folder (``..``, absolute) is an error: split files are data and
must not make the loader read arbitrary files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

from ..errors import DataError, UnknownChoiceError
from .tasks import TaskInfo, known_tasks, protocol_splits, split_file, task_folders

_LABEL = re.compile(r"-?[0-9]+")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One line of a split file; ``label`` is as written (FGVC: a raw class id)."""

    path: Path
    label: int
    where: str  # "line 17" or "entry 'a/b.jpg'", for messages


Items = list[tuple[Path, int]]


def require_root(root: Path) -> Path:
    """``root`` as an absolute path, or a DataError when it is not a folder."""
    root = Path(os.path.abspath(root))
    if not root.exists():
        raise DataError(f"data root {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data root {root} is not a directory")
    return root


def image_base(root: Path, suite: str, task: str) -> Path:
    """The folder that relative image paths of ``task`` are relative to."""
    folder = Path(os.path.abspath(root)) / task
    if suite == "fgvc":
        for name in ("images", "Images"):  # VPT: CUB/NABirds use images/, Dogs Images/
            if (folder / name).is_dir():
                return folder / name
    return folder


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(base: Path, rel: str) -> Path | None:
    """``base / rel`` normalized, or None when it would leave ``base``.

    Lexical on purpose: resolving symlinks would reject the common set-up of an
    images folder symlinked to another disk.
    """
    if not rel or Path(rel).is_absolute():
        return None
    full = Path(os.path.normpath(base / rel))
    return full if full != base and full.is_relative_to(base) else None


def parse_vtab(text: str, file: Path, base: Path) -> tuple[list[Entry], list[str]]:
    entries: list[Entry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)  # rsplit: a path may contain spaces
        where = f"{file} line {number}"
        if len(parts) != 2:
            problems.append(f"{where}: expected 'relative/path label', got {_shorten(line)!r}")
            continue
        rel, label_text = parts
        if not _LABEL.fullmatch(label_text):
            problems.append(f"{where}: label {_shorten(label_text)!r} is not an integer")
            continue
        label = int(label_text)
        if label < 0:
            problems.append(f"{where}: label {label} is negative")
            continue
        path = _join(base, rel)
        if path is None:
            problems.append(f"{where}: path {_shorten(rel)!r} leaves the dataset folder {base}")
            continue
        entries.append(Entry(path, label, f"line {number}"))
    return entries, problems


def parse_fgvc(text: str, file: Path, base: Path) -> tuple[list[Entry], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return [], [f"{file} line {err.lineno}: not valid JSON ({err.msg})"]
    if not isinstance(data, dict):
        return [], [f"{file}: expected a JSON object mapping image path to label, got {type(data).__name__}"]
    entries: list[Entry] = []
    problems: list[str] = []
    for rel, label in data.items():
        where = f"{file} entry {_shorten(rel)!r}"
        if isinstance(label, bool) or not isinstance(label, int):
            problems.append(f"{where}: label {_shorten(repr(label))} is not an integer")
            continue
        if label < 0:
            problems.append(f"{where}: label {label} is negative")
            continue
        path = _join(base, rel)
        if path is None:
            problems.append(f"{where}: path leaves the dataset folder {base}")
            continue
        entries.append(Entry(path, label, f"entry {_shorten(rel)!r}"))
    return entries, problems


def scan_split(root: Path, suite: str, task: str, split: str) -> tuple[list[Entry], list[str]]:
    """All entries that parse and every problem found; never raises for bad data."""
    file = split_file(Path(os.path.abspath(root)), suite, task, split)
    if not file.is_file():
        return [], [f"{file}: split file missing"]
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [], [f"{file}: cannot read ({err})"]
    parse = parse_vtab if suite == "vtab" else parse_fgvc
    entries, problems = parse(text, file, image_base(root, suite, task))
    if not entries and not problems:
        problems.append(f"{file}: no entries")
    return entries, problems


def map_class_ids(entries: list[Entry], class_ids: list[int], file: Path) -> tuple[list[Entry], list[str]]:
    """FGVC: raw class ids → contiguous labels by their rank in ``class_ids``."""
    rank = {cid: i for i, cid in enumerate(class_ids)}
    mapped, problems = [], []
    for e in entries:
        if e.label in rank:
            mapped.append(dataclasses.replace(e, label=rank[e.label]))
        else:
            problems.append(f"{file} {e.where}: class id {e.label} does not appear in train.json")
    return mapped, problems


def _raise(problems: list[str]) -> None:
    more = f" (and {len(problems) - 1} more; run 'alorectl data check')" if len(problems) > 1 else ""
    raise DataError(problems[0] + more)


def _read_entries(root: Path, suite: str, task: str, split: str) -> list[Entry]:
    folder = Path(os.path.abspath(root)) / task
    if not folder.is_dir():
        raise DataError(f"task folder {folder} does not exist")
    entries, problems = scan_split(root, suite, task, split)
    if problems:
        _raise(problems)
    return entries


def fgvc_class_ids(root: Path, task: str) -> list[int]:
    """The sorted distinct class ids of an FGVC dataset's ``train.json``."""
    return sorted({e.label for e in _read_entries(root, "fgvc", task, "train")})


def read_split(root: Path, suite: str, task: str, split: str, *, num_classes: int | None = None) -> Items:
    """``[(absolute image path, label), ...]`` of one split; DataError on any problem."""
    root = require_root(root)
    entries = _read_entries(root, suite, task, split)
    file = split_file(root, suite, task, split)
    if suite == "fgvc":
        entries, problems = map_class_ids(entries, fgvc_class_ids(root, task), file)
        if problems:
            _raise(problems)
    if num_classes is not None:
        bad = [e for e in entries if e.label >= num_classes]
        if bad:
            _raise([f"{file} {e.where}: label {e.label} out of range [0, {num_classes})" for e in bad])
    return [(e.path, e.label) for e in entries]


def read_protocol(
    root: Path, suite: str, task: str, protocol: str, *, num_classes: int | None = None
) -> tuple[Items, Items]:
    """(train items, eval items) of ``protocol``: search = train800→val200, final = train800val200→test."""
    splits = protocol_splits(suite, protocol)
    train = [item for s in splits.train for item in read_split(root, suite, task, s, num_classes=num_classes)]
    return train, read_split(root, suite, task, splits.eval, num_classes=num_classes)


def infer_num_classes(root: Path, suite: str, task: str) -> tuple[int, int | None]:
    """(class count, test size) of a task the tables do not know, from its files."""
    root = require_root(root)
    if suite == "fgvc":
        num_classes = len(fgvc_class_ids(root, task))
    else:
        labels = [
            e.label
            for s in ("train800val200", "train800", "val200", "test")
            if split_file(root, suite, task, s).is_file()
            for e in _read_entries(root, suite, task, s)
        ]
        if not labels:
            raise DataError(f"{root / task}: no split file with entries")
        num_classes = max(labels) + 1
    test = split_file(root, suite, task, "test")
    test_size = len(_read_entries(root, suite, task, "test")) if test.is_file() else None
    return num_classes, test_size


def task_info(suite: str, task: str, root: Path | None = None) -> TaskInfo:
    """The TaskInfo of a known task, or one inferred from ``root/task`` on disk.

    For an unknown VTAB-layout folder the class count is ``max(label) + 1`` over
    its split files; for an unknown FGVC folder it is the number of distinct
    class ids in ``train.json``.
    """
    known = known_tasks(suite)
    if task in known:
        return known[task]
    on_disk = task_folders(root, suite) if root is not None else []
    if task not in on_disk:
        hint = "" if root is None else f"(nor a folder with split files under {root})"
        raise UnknownChoiceError("task", task, set(known) | set(on_disk), hint)
    num_classes, test_size = infer_num_classes(Path(root), suite, task)
    return TaskInfo(task, num_classes, "Custom", test_size)
