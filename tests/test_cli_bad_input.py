"""Every mistake a user can type into a command: one line naming the bad value, exit 2, no trace, nothing written.

One table (:data:`ROWS`); add a row per new mistake. Placeholders in ``argv``:
``{data}`` the demo VTAB root, ``{demo_w}`` the demo backbone's weights, ``{out}``
a fresh output folder, ``{tmp}`` the fresh work folder (also the current
directory, so default relative paths land there too), ``{file}`` an existing
plain file. ``setup`` names a function below that prepares the work folder
before the snapshot (a corrupt checkpoint, a broken weights file, ...). After
the command, the work folder must be exactly as it was.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

from alorectl.cli import app

runner = CliRunner()

TRAIN = ["train", "--backbone", "demo", "--weights", "{demo_w}", "--task", "digits", "--data-root", "{data}",
         "--epochs", "1", "--device", "cpu", "--out", "{out}"]
BENCH_INFERENCE = ["bench", "inference", "--backbone", "vit_test", "--methods", "linear", "--device", "cpu"]
BENCH_TRAIN = ["bench", "train", "--backbone", "vit_test", "--methods", "linear", "--device", "cpu"]
TRAVERSAL = "vit_tiny_patch16_224./../x"


@dataclasses.dataclass
class Row:
    id: str
    argv: list[str]
    fragment: str           # a piece of the one stderr line
    code: int = 2
    setup: str | None = None


ROWS = [
    # alorectl train
    Row("train-option-type", [*TRAIN, "--option", "rank=abc"], "option rank='abc' for method 'alore' must be an integer"),
    Row("train-device", [*TRAIN, "--device", "tpu"], "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
    Row("train-out-is-file", [*TRAIN, "--out", "{file}"], "is a file, not a folder"),
    Row("train-corrupt-checkpoint", TRAIN, "checkpoint.pt is not a valid alore checkpoint", setup="corrupt_checkpoint"),
    Row("train-malicious-checkpoint", TRAIN, "is not a valid alore checkpoint (it holds Python objects",
        setup="malicious_checkpoint"),
    Row("train-warmup-over-epochs", [*TRAIN, "--epochs", "5", "--warmup-epochs", "10"],
        "--warmup-epochs must be in [0, --epochs=5], got 10"),
    Row("train-unsafe-backbone", [*TRAIN, "--backbone", TRAVERSAL], f"invalid backbone name '{TRAVERSAL}'"),
    Row("train-real-backbone-no-weights", ["train", "--backbone", "vit_b", "--task", "digits", "--data-root", "{data}",
                                           "--device", "cpu", "--out", "{out}"],
        "no pretrained weights for vit_b: timm's 'vit_base_patch16_224.orig_in21k' is not in the local hub cache"),
    Row("train-weights-missing", [*TRAIN, "--weights", "{tmp}/nope.safetensors"], "weights file not found"),
    Row("train-weights-text-pth", [*TRAIN, "--weights", "{tmp}/text.pth"],
        "text.pth is not a valid PyTorch .pth weights file", setup="text_pth"),
    Row("train-weights-corrupt-npz", [*TRAIN, "--backbone", "vit_test", "--weights", "{tmp}/bad.npz"],
        "bad.npz is not a valid numpy .npz weights file", setup="corrupt_npz"),
    # alorectl bench (inference, train)
    Row("bench-inference-device", [*BENCH_INFERENCE, "--device", "tpu"], "unknown device 'tpu'"),
    Row("bench-inference-batch-0", [*BENCH_INFERENCE, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    Row("bench-inference-steps-neg", [*BENCH_INFERENCE, "--steps", "-1"], "--steps must be >= 1, got -1"),
    Row("bench-train-steps-0", [*BENCH_TRAIN, "--steps", "0"], "--steps must be >= 1, got 0"),
    Row("bench-train-device", [*BENCH_TRAIN, "--device", "tpu"], "unknown device 'tpu'"),
    # alorectl params, check-merge
    Row("params-unsafe-backbone", ["params", "--backbone", TRAVERSAL], f"invalid backbone name '{TRAVERSAL}'"),
    Row("params-unknown-tag", ["params", "--backbone", "vit_tiny_patch16_224.bogus"],
        "unknown pretrained tag for vit_tiny_patch16_224 'bogus'; valid choices: augreg_in21k"),
    Row("check-merge-tolerance", ["check-merge", "--backbone", "vit_test", "--tolerance", "0"],
        "--tolerance must be > 0, got 0.0"),
    # alorectl data check: problems in the data are the user's to fix, like any bad input
    Row("data-check-problem", ["data", "check", "--root", "{tmp}/broken"], "1 of 1 task(s) have problems",
        setup="broken_task"),
]


# --- setups: run inside the fresh work folder, before the snapshot ---------------------------------

def corrupt_checkpoint(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip")


class Payload:
    """Unpickling this would run code (create a file): what weights_only=True must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_checkpoint(tmp: Path) -> None:
    (tmp / "out").mkdir()
    with open(tmp / "out" / "checkpoint.pt", "wb") as f:
        pickle.dump({"config": {}, "payload": Payload(str(tmp / "pwned"))}, f)


def text_pth(tmp: Path) -> None:
    (tmp / "text.pth").write_text("these are not weights\n")


def corrupt_npz(tmp: Path) -> None:
    (tmp / "bad.npz").write_bytes(b"\x93NUMPY garbage")


def broken_task(tmp: Path) -> None:
    task = tmp / "broken" / "mytask"
    task.mkdir(parents=True)
    for split in ("train800", "val200", "train800val200", "test"):
        (task / f"{split}.txt").write_text(f"images/{split}.png 0\n")  # images that are not there


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row: Row, demo_dir, tmp_path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("not a folder")
    if row.setup:
        globals()[row.setup](work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("ALORE_WEIGHTS_DIR", str(work / "weights"))
    # An empty hub cache, offline: a user's cached checkpoints must not change the answer.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    values = {"data": demo_dir / "vtab-1k", "demo_w": demo_dir / "demo.safetensors", "out": work / "out",
              "tmp": work, "file": work / "a-file"}
    argv = [a.format(**values) for a in row.argv]
    before = snapshot(work)

    result = runner.invoke(app, argv)

    assert result.exit_code == row.code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert row.fragment in lines[0]
    assert snapshot(work) == before, "nothing is created or changed"
    assert not (tmp_path / "hub").exists() and not os.path.exists(work / "pwned")
