"""A small real dataset in the VTAB-1k layout, made from scikit-learn's digits.

No network: scikit-learn ships the 1,797 8×8 digits. With a fixed seed they
are permuted once and split into disjoint parts:

* 597 images held out to pre-train the demo backbone
  (:func:`demo_pretrain_arrays`); no downstream task uses them;
* 640 / 160 / 400 images, the same for every task, as ``train800`` /
  ``val200`` / ``test`` (``train800val200`` is the 800 of the first two).

Like VTAB's CLEVR and dSprites tasks, the tasks label the same images in
different ways:

* ``digits``: the digit (10 classes);
* ``digits_rot``: the digit rotated by 0/90/180/270°, labelled by the rotation (4);
* ``digits_loc``: the digit at half size in one of the canvas's 4 quadrants,
  labelled by the quadrant (4).

Images are 32×32 RGB PNGs (the 8×8 digit upscaled ×4, gray on black). The
dataset is written to a temporary folder and renamed into place, so a crash
never leaves a folder that looks complete; ``demo.json`` records the seed, the
sizes and the held-out indices.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from .tasks import DEMO_SIZES, DEMO_TASKS

SEED = 0
VERSION = 1
CANVAS = 32
PRETRAIN_SIZE = 597
MANIFEST = "demo.json"
FOLDER = "vtab-1k"


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    gray = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 → 0..255
    return gray, digits.target.astype(np.int64)


def _partition(n: int) -> dict[str, np.ndarray]:
    """Disjoint index sets into the digits: pretrain / train800 / val200 / test."""
    order = np.random.default_rng(SEED).permutation(n)
    sizes = {"pretrain": PRETRAIN_SIZE, **DEMO_SIZES}
    if sum(sizes.values()) > n:
        raise AssertionError(f"demo sizes {sizes} exceed the {n} digits")
    parts, start = {}, 0
    for name, size in sizes.items():
        parts[name] = order[start : start + size]
        start += size
    return parts


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _upscale(gray: np.ndarray, factor: int) -> np.ndarray:
    return np.kron(gray, np.ones((factor, factor), dtype=np.uint8))


def _render_digit(gray: np.ndarray, _label: int) -> np.ndarray:
    return _upscale(gray, CANVAS // 8)


def _render_rot(gray: np.ndarray, quarter_turns: int) -> np.ndarray:
    return _upscale(np.rot90(gray, quarter_turns), CANVAS // 8)


def _render_loc(gray: np.ndarray, quadrant: int) -> np.ndarray:
    half = CANVAS // 2
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.uint8)
    top, left = (quadrant // 2) * half, (quadrant % 2) * half
    canvas[top : top + half, left : left + half] = _upscale(gray, half // 8)
    return canvas


def _task_labels(digit_labels: np.ndarray) -> dict[str, tuple[np.ndarray, Callable[[np.ndarray, int], np.ndarray]]]:
    """Per task: the label of every digit image and how to draw it."""
    rng = np.random.default_rng(SEED + 1)
    n = len(digit_labels)
    rotations, quadrants = rng.integers(0, 4, size=n), rng.integers(0, 4, size=n)
    tasks = {
        "digits": (digit_labels, _render_digit),
        "digits_rot": (rotations, _render_rot),
        "digits_loc": (quadrants, _render_loc),
    }
    assert set(tasks) == set(DEMO_TASKS), "tasks.DEMO_TASKS and demo.py disagree"
    return tasks


def demo_pretrain_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The held-out digits for pre-training: uint8 ``(597, 3, 32, 32)`` and int64 digit labels.

    Rendered as the ``digits`` task renders its images; disjoint from every
    downstream split.
    """
    gray, labels = _digits()
    idx = _partition(len(labels))["pretrain"]
    images = np.stack([_rgb(_render_digit(gray[i], 0)).transpose(2, 0, 1) for i in idx])
    return images, labels[idx]


def _write_task(folder: Path, gray: np.ndarray, labels: np.ndarray,
                render: Callable[[np.ndarray, int], np.ndarray], parts: dict[str, np.ndarray]) -> None:
    (folder / "images").mkdir(parents=True)
    lines: dict[str, list[str]] = {}
    for split in DEMO_SIZES:
        lines[split] = []
        for i in parts[split]:
            rel = f"images/{i:04d}.png"  # the digits index: traceable to the source
            Image.fromarray(_rgb(render(gray[i], int(labels[i])))).save(folder / rel, format="PNG")
            lines[split].append(f"{rel} {int(labels[i])}\n")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, content in lines.items():
        (folder / f"{split}.txt").write_text("".join(content), encoding="utf-8")


def _is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("format") == "alore-demo" and manifest.get("version") == VERSION


def write_demo_dataset(out_dir: Path) -> Path:
    """Write ``out_dir/vtab-1k/<task>/...`` and return ``out_dir/vtab-1k``.

    A no-op when a complete demo dataset of this version is already there; an
    older demo version is replaced; any other existing folder is left alone
    (DataError).
    """
    out_dir = Path(out_dir)
    final = out_dir / FOLDER
    if _is_complete(final):
        return final
    if final.exists() and not (final / MANIFEST).is_file():
        raise DataError(f"{final} exists and is not an alore demo dataset; remove it or choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is not a directory")
    gray, digit_labels = _digits()
    parts = _partition(len(digit_labels))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.partial-", dir=out_dir))
    except OSError as err:
        raise DataError(f"cannot write under {out_dir}: {err.strerror or err}") from None
    try:
        for name, (labels, render) in _task_labels(digit_labels).items():
            _write_task(tmp / name, gray, labels, render, parts)
        manifest = {
            "format": "alore-demo",
            "version": VERSION,
            "source": "sklearn.datasets.load_digits",
            "seed": SEED,
            "tasks": {name: info.num_classes for name, info in DEMO_TASKS.items()},
            "sizes": {**DEMO_SIZES, "train800val200": DEMO_SIZES["train800"] + DEMO_SIZES["val200"]},
            "pretrain_indices": sorted(int(i) for i in parts["pretrain"]),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if final.exists():  # an older demo version: move it aside, then drop it
            old = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.old-", dir=out_dir))
            os.replace(final, old / FOLDER)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _is_complete(final):  # else another writer finished first: keep theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):  # disk full, permissions: a user-fixable problem
            raise DataError(f"cannot write the demo dataset to {final}: {err.strerror or err}") from None
        raise
    return final
