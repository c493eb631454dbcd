"""The one table of the CLI's bad input: every mistake a user can type, one line naming it, exit 2, no trace,
nothing written.

Each row of :data:`ROWS` is a real ``alorectl`` command line, the exit code, pieces of the one stderr line
(``error: ...``), and the contract every row shares: no traceback, the work folder exactly as it was
(nothing created, nothing changed, not even a file's mtime) and nothing beside it either. Add a row per new
mistake. The security module (``tests/test_security.py``) holds the deeper checks behind some rows: path
escapes, passwords, pickles, Ray.

Placeholders in ``argv``, ``fragment`` and ``preset``: ``{data}`` the demo VTAB root, ``{demo_w}`` the demo
backbone's weights, ``{out}`` an output folder in the work folder, ``{tmp}`` the fresh work folder (also the
current directory, so default relative paths land there too), ``{file}`` an existing plain file, ``{busy}`` a
port that another server listens on (127.0.0.1).
``setup`` is a function above the table that prepares the work folder before the snapshot (a corrupt
checkpoint, a recorded result, ...). ``preset`` is written to ``{tmp}/p.yaml``: :data:`GOOD_PRESET` with
the row's keys replaced. ``absent``: text (a password) that must appear nowhere in the output (a real
``alorectl`` process also warns, on a line of its own, when a password is among its arguments: see
tests/test_security.py). ``subprocess``: run the command as a real process (``alorectl ui``: were its
check broken, an in-process run would exec the MLflow server in place of pytest).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import yaml
from typer.testing import CliRunner
from test_security import Planted
from ui_utils import FOREIGN_ENV, alorectl

from alorectl import db
from alorectl.cli import app
from alorectl.defaults import db_url

runner = CliRunner()

TRAIN = ["train", "--backbone", "demo", "--weights", "{demo_w}", "--task", "digits", "--data-root", "{data}",
         "--epochs", "1", "--device", "cpu", "--out", "{out}"]
BENCH_INFERENCE = ["bench", "inference", "--backbone", "vit_test", "--methods", "linear", "--device", "cpu"]
BENCH_TRAIN = ["bench", "train", "--backbone", "vit_test", "--methods", "linear", "--device", "cpu"]
TRAVERSAL = "vit_tiny_patch16_224./../x"
SWEEP = ["sweep", "{tmp}/p.yaml", "--workdir", "{tmp}"]  # the work folder itself: the snapshot sees all it makes
GOOD_PRESET = {"suite": "vtab", "data_root": "{data}", "weights": {"demo": "{demo_w}"}, "backbones": ["demo"],
               "tasks": ["digits"], "methods": ["linear"]}
BAD_NAME = "use letters, digits, '_', '-', '.' (no path separators, no '..' or '__')"
NO_SWEEP = "no sweep has run in this workdir ({tmp}); run one first: alorectl sweep demo"
EXPORT = ["export", "--backbone", "demo", "--method", "alore", "--out", "{out}", "--workdir", "{tmp}"]
BOARD = ["leaderboard", "--workdir", "{tmp}"]
PG = "postgresql+psycopg://alice:{}@127.0.0.1:1/alore"  # nothing listens on port 1


@dataclasses.dataclass
class Row:
    id: str
    argv: list[str]
    fragment: str | tuple[str, ...]  # piece(s) of the one stderr line
    code: int = 2
    setup: Callable[[Path], None] | None = None  # prepares the work folder before the snapshot
    preset: dict[str, Any] | None = None  # {tmp}/p.yaml: GOOD_PRESET with these keys replaced
    absent: tuple[str, ...] = ()          # in neither stdout nor stderr
    subprocess: bool = False


# --- setups: run inside the fresh work folder, before the snapshot ---------------------------------

def corrupt_checkpoint(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a zip")


def malicious_checkpoint(tmp: Path) -> None:
    (tmp / "out").mkdir()
    with open(tmp / "out" / "checkpoint.pt", "wb") as f:
        pickle.dump({"config": {}, "payload": Planted(str(tmp / "pwned"))}, f)  # unpickled: it runs


def text_pth(tmp: Path) -> None:
    (tmp / "text.pth").write_text("these are not weights\n")


def corrupt_npz(tmp: Path) -> None:
    (tmp / "bad.npz").write_bytes(b"\x93NUMPY garbage")


def broken_task(tmp: Path) -> None:
    task = tmp / "broken" / "mytask"
    task.mkdir(parents=True)
    for split in ("train800", "val200", "train800val200", "test"):
        (task / f"{split}.txt").write_text(f"images/{split}.png 0\n")  # images that are not there


def malformed_yaml(tmp: Path) -> None:
    (tmp / "broken.yaml").write_text("suite: vtab\nmethods: [alore\n")


def recorded(tmp: Path) -> None:
    """A leaderboard with one result, demo/digits/alore, of the sweep 'handmade', which logged to an MLflow
    server with a password (stored masked). The run folder holds an empty adapter: the refusals come first."""
    run = tmp / "run"
    run.mkdir()
    (run / "adapter.safetensors").write_bytes(b"")
    engine = db.connect(db_url(tmp))
    try:
        sweep = db.upsert_sweep(engine, "handmade", preset="demo", suite="vtab", status="done",
                                config={"tracking_uri": "http://alice:***@host:5000"})
        db.upsert_cell(engine, sweep, "demo", "digits", "alore", status="done")
        db.record_result(engine, sweep_id=sweep, backbone="demo", task="digits", method="alore", suite="vtab",
                         test_acc_mean=70.0, seeds=[42], artifact_uri=str(run))
    finally:
        engine.dispose()


def mlflow_store(tmp: Path) -> None:
    (tmp / "mlflow.db").write_bytes(b"")  # where `alorectl ui` looks for the store; never opened here


def recorded_and_out_taken(tmp: Path) -> None:
    recorded(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")



ROWS = [
    # alorectl train
    Row("train-option-type", [*TRAIN, "--option", "rank=abc"],
        "option rank='abc' for method 'alore' must be an integer"),
    Row("train-device", [*TRAIN, "--device", "tpu"], "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
    Row("train-out-is-file", [*TRAIN, "--out", "{file}"], ("{file}", "is a file, not a folder")),
    Row("train-corrupt-checkpoint", TRAIN, "checkpoint.pt is not a valid alore checkpoint", setup=corrupt_checkpoint),
    Row("train-malicious-checkpoint", TRAIN, "is not a valid alore checkpoint (it holds Python objects",
        setup=malicious_checkpoint),
    Row("train-warmup-over-epochs", [*TRAIN, "--epochs", "5", "--warmup-epochs", "10"],
        "--warmup-epochs must be in [0, --epochs=5], got 10"),
    Row("train-unsafe-backbone", [*TRAIN, "--backbone", TRAVERSAL], f"invalid backbone name '{TRAVERSAL}'"),
    Row("train-real-backbone-no-weights", ["train", "--backbone", "vit_b", "--task", "digits", "--data-root", "{data}",
                                           "--device", "cpu", "--out", "{out}"],
        "no pretrained weights for vit_b: timm's 'vit_base_patch16_224.orig_in21k' is not in the local hub cache"),
    Row("train-weights-missing", [*TRAIN, "--weights", "{tmp}/nope.safetensors"],
        ("weights file not found", "{tmp}/nope.safetensors")),
    Row("train-weights-text-pth", [*TRAIN, "--weights", "{tmp}/text.pth"],
        "text.pth is not a valid PyTorch .pth weights file", setup=text_pth),
    Row("train-weights-corrupt-npz", [*TRAIN, "--backbone", "vit_test", "--weights", "{tmp}/bad.npz"],
        "bad.npz is not a valid numpy .npz weights file", setup=corrupt_npz),
    # alorectl bench (inference, train)
    Row("bench-inference-device", [*BENCH_INFERENCE, "--device", "tpu"],
        "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
    Row("bench-inference-batch-0", [*BENCH_INFERENCE, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    Row("bench-inference-steps-neg", [*BENCH_INFERENCE, "--steps", "-1"], "--steps must be >= 1, got -1"),
    Row("bench-train-steps-0", [*BENCH_TRAIN, "--steps", "0"], "--steps must be >= 1, got 0"),
    Row("bench-train-device", [*BENCH_TRAIN, "--device", "tpu"],
        "unknown device 'tpu'; valid choices: auto, cpu, cuda"),
    Row("bench-train-batch-0", [*BENCH_TRAIN, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    Row("bench-inference-steps-0", [*BENCH_INFERENCE, "--steps", "0"], "--steps must be >= 1, got 0"),
    Row("bench-train-steps-neg", [*BENCH_TRAIN, "--steps", "-1"], "--steps must be >= 1, got -1"),
    # alorectl params, check-merge
    Row("params-unsafe-backbone", ["params", "--backbone", TRAVERSAL], f"invalid backbone name '{TRAVERSAL}'"),
    Row("params-unknown-tag", ["params", "--backbone", "vit_tiny_patch16_224.bogus"],
        "unknown pretrained tag for vit_tiny_patch16_224 'bogus'; valid choices: augreg_in21k"),
    Row("check-merge-tolerance", ["check-merge", "--backbone", "vit_test", "--tolerance", "0"],
        "--tolerance must be > 0, got 0.0"),
    # alorectl data check; problems in the data are the user's to fix, like any bad input
    Row("data-check-root-missing", ["data", "check", "--root", "{tmp}/nowhere"],
        "data root {tmp}/nowhere does not exist"),
    Row("data-check-suite", ["data", "check", "--root", "{tmp}", "--suite", "coco"],
        "unknown suite 'coco'; valid choices: fgvc, vtab"),
    Row("data-check-task", ["data", "check", "--root", "{tmp}", "--tasks", "cifarr"],
        "unknown task 'cifarr'; valid choices: caltech101, cifar"),
    Row("data-check-no-tasks", ["data", "check", "--root", "{tmp}"], "{tmp}: no vtab task folders found"),
    Row("data-check-problem", ["data", "check", "--root", "{tmp}/broken"], "1 of 1 task(s) have problems",
        setup=broken_task),
    # alorectl sweep: names that could escape the work folder
    Row("sweep-name-dotdot", [*SWEEP, "--name", ".."], ("bad sweep name '..'", BAD_NAME), preset={}),
    Row("sweep-name-slash", [*SWEEP, "--name", "a/b"], "bad sweep name 'a/b'", preset={}),
    Row("sweep-name-double-underscore", [*SWEEP, "--name", "x__y"], "bad sweep name 'x__y'", preset={}),
    Row("sweep-backbone-escape", [*SWEEP, "--backbones", "vit_tiny_patch16_224./../../esc"],
        "bad backbone name 'vit_tiny_patch16_224./../../esc'", preset={}),
    Row("sweep-task-escape", [*SWEEP, "--tasks", "../t"], "bad task name '../t'", preset={}),
    Row("sweep-method-escape", [*SWEEP, "--methods", "a/b"], "bad method name 'a/b'", preset={}),
    # alorectl sweep: the preset
    Row("preset-batch-size-0", SWEEP, "train.batch_size must be an integer >= 1, got 0",
        preset={"train": {"batch_size": 0}}),
    Row("preset-vpt-prompts-negative", SWEEP, "vpt with prompts=-10: prompts must be >= 1, got -10",
        preset={"methods": ["vpt"], "method_space": {"vpt": {"prompts": [5, -10]}}}),
    Row("preset-trials-not-int", SWEEP, "search.trials must be an integer >= 1, got 'abc'",
        preset={"search": {"trials": "abc"}}),
    Row("preset-cpus-not-number", SWEEP, "resources.cpus_per_trial must be a number > 0, got 'x'",
        preset={"resources": {"cpus_per_trial": "x"}}),
    Row("preset-search-not-mapping", SWEEP, ("search must be a mapping like", "got 5"), preset={"search": 5}),
    Row("preset-train-not-mapping", SWEEP, ("train must be a mapping like", "got [1]"), preset={"train": [1]}),
    Row("preset-unknown-backbone", SWEEP, "unknown backbone 'vit_q'; valid choices: convnext_b",
        preset={"backbones": ["vit_q"]}),
    Row("preset-unknown-method", SWEEP, "unknown method in preset {tmp}/p.yaml 'alora'; valid choices: adapter",
        preset={"methods": ["alora"]}),
    Row("preset-unknown-task", SWEEP, "unknown task 'cifarr'; valid choices: caltech101, cifar",
        preset={"tasks": ["cifarr"]}),
    Row("preset-negative-lr", SWEEP, "space.lr: bad grid value -1.0 for lr (must be a number > 0)",
        preset={"space": {"lr": [-1.0]}}),
    Row("preset-unknown-search", SWEEP,
        "unknown search algorithm in preset {tmp}/p.yaml 'random'; valid choices: grid, optuna",
        preset={"search": {"algorithm": "random"}}),
    Row("preset-data-root-missing", SWEEP, "data root not found: /nonexistent/vtab",
        preset={"data_root": "/nonexistent/vtab"}),
    Row("preset-malformed-yaml", ["sweep", "{tmp}/broken.yaml", "--workdir", "{tmp}"],
        "preset {tmp}/broken.yaml line 3: not valid YAML", setup=malformed_yaml),
    Row("preset-unknown-name", ["sweep", "vtabb", "--workdir", "{tmp}"],
        "unknown preset 'vtabb'; valid choices: demo, fgvc, vtab"),
    # alorectl sweep: what it needs and cannot reach (offline, an empty hub cache; nothing listens on port 1)
    Row("sweep-real-backbone-no-weights", SWEEP,
        ("no pretrained weights for vit_b: timm's 'vit_base_patch16_224.orig_in21k' is not in the local hub cache",
         "pass --weights vit_b=FILE"), preset={"backbones": ["vit_b"], "weights": {}}),
    Row("sweep-ray-unreachable", [*SWEEP, "--address", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1",
        preset={}),
    Row("sweep-db-unreachable", [*SWEEP, "--db", PG.format("s3cret")],
        "cannot reach database postgresql+psycopg://alice:***@127.0.0.1:1/alore", preset={}, absent=("s3cret",)),
    Row("sweep-db-raw-at-in-password", [*SWEEP, "--db", PG.format("pa@ss")],
        "database URL 'postgresql+psycopg://alice:***@127.0.0.1:1/alore' has a raw '@' in its user or password; "
        "percent-encode it as %40", preset={}, absent=("pa@", "ss@")),
    # reading commands on a work folder where no sweep ran
    Row("leaderboard-nothing-recorded", [*BOARD, "--backbone", "demo"], NO_SWEEP),
    Row("export-nothing-recorded", [*EXPORT, "--task", "digits"], NO_SWEEP),
    Row("sweep-status-nothing-recorded", ["sweep", "status", "tiny", "--workdir", "{tmp}"], NO_SWEEP),
    Row("sweep-resume-nothing-recorded", ["sweep", "resume", "tiny", "--workdir", "{tmp}"], NO_SWEEP),
    Row("analyze-nothing-recorded", ["analyze", "experts", "--backbone", "demo", "--task", "digits", "--workdir",
                                     "{tmp}"], "no sweep has run in this workdir ({tmp}); pass --from DIR"),
    # reading commands on a recorded result (demo/digits/alore of sweep 'handmade')
    Row("leaderboard-unknown-suite", [*BOARD, "--backbone", "demo", "--suite", "vtb"],
        "unknown suite 'vtb'; valid choices: fgvc, vtab", setup=recorded),
    Row("leaderboard-suite-not-recorded", [*BOARD, "--backbone", "demo", "--suite", "fgvc"],
        "'fgvc'; valid choices: vtab", setup=recorded),
    Row("leaderboard-unknown-backbone", [*BOARD, "--backbone", "nope"], "unknown backbone 'nope'; valid choices: demo",
        setup=recorded),
    Row("export-unknown-result", [*EXPORT, "--task", "cifar"],
        ("unknown result 'demo/cifar/alore'", "demo/digits/alore"), setup=recorded),
    Row("export-out-not-empty", [*EXPORT, "--task", "digits"], ("--out {out} is not empty", "--force"),
        setup=recorded_and_out_taken),
    Row("sweep-status-unknown", ["sweep", "status", "nope", "--workdir", "{tmp}"],
        "unknown sweep 'nope'; valid choices: handmade", setup=recorded),
    Row("sweep-resume-unknown", ["sweep", "resume", "nope", "--workdir", "{tmp}"],
        "unknown sweep 'nope'; valid choices: handmade", setup=recorded),
    Row("sweep-resume-password-not-stored", ["sweep", "resume", "handmade", "--workdir", "{tmp}"],
        "http://alice:***@host:5000, whose password is not stored; pass --tracking-uri", setup=recorded),
    # old or mistyped flags: Click's usage errors, one line too
    Row("leaderboard-typo-flag", [*BOARD, "--tracking-uri-flag", "x"],
        "No such option: --tracking-uri-flag (Possible options: --tracking-uri)"),
    Row("export-typo-flag", [*EXPORT, "--task", "digits", "--tracking-uri-flag", "x"],
        "No such option: --tracking-uri-flag (Possible options: --tracking-uri)"),
    Row("ui-typo-flag", ["ui", "--workdir", "{tmp}", "--tracking-uri-flag", "x"],
        "No such option: --tracking-uri-flag (Possible options: --tracking-uri)"),
    # what the user typed is quoted, never read as markup, never with a password in it
    Row("usage-error-quotes-markup", ["ui", "--port", "[/x]"], "(got '[/x]')"),
    Row("error-quotes-markup", [*BOARD, "--backbone", "demo", "--format", "[/b]"], "unknown format '[/b]'"),
    Row("usage-error-masks-password", [*BOARD, "--backbone", "demo", "postgresql://alice:s3cret@h/db"],
        "unexpected extra argument(s) (postgresql://alice:***@h/db)", absent=("s3cret",)),
    # alorectl ui, in a process of its own
    Row("ui-port-too-high", ["ui", "--port", "99999"], ("--port 99999", "1-65535"), subprocess=True),
    Row("ui-port-0", ["ui", "--port", "0"], ("--port 0", "1-65535"), subprocess=True),
    Row("ui-port-not-int", ["ui", "--port", "abc"], ("Invalid value for '--port'", "(got 'abc')"), subprocess=True),
    Row("ui-no-store", ["ui", "--workdir", "{tmp}/work"], ("no MLflow store", "{tmp}/work"), subprocess=True),
    Row("ui-port-in-use", ["ui", "--workdir", "{tmp}", "--port", "{busy}"],
        ("--port {busy} is already in use on 127.0.0.1", "pick a free one"), setup=mlflow_store, subprocess=True),
]


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``; a file with its size and mtime. A folder's own mtime is left out: SQLite
    makes and removes its ``-wal``/``-shm`` files beside a database it only reads."""
    return {str(p.relative_to(root)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def fill(value: Any, values: dict[str, Path]) -> Any:
    """``value`` with its placeholders filled in (strings, and the strings inside lists and dicts)."""
    if isinstance(value, str):
        return value.format(**values)
    if isinstance(value, list):
        return [fill(v, values) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, values) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A port somebody else's server listens on."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row: Row, demo_dir, tmp_path, monkeypatch,
                                                         busy_port) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("not a folder")
    values = {"data": demo_dir / "vtab-1k", "demo_w": demo_dir / "demo.safetensors", "out": work / "out",
              "tmp": work, "file": work / "a-file", "busy": busy_port}
    if row.setup:
        row.setup(work)
    if row.preset is not None:
        (work / "p.yaml").write_text(yaml.safe_dump(fill({**GOOD_PRESET, **row.preset}, values)))
    monkeypatch.chdir(work)
    for name in FOREIGN_ENV:  # nothing from this shell may point a command elsewhere
        monkeypatch.delenv(name, raising=False)
    env = {"ALORE_WEIGHTS_DIR": str(work / "weights"), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    monkeypatch.setenv("ALORE_WEIGHTS_DIR", env["ALORE_WEIGHTS_DIR"])
    # An empty hub cache, offline: a user's cached checkpoints must not change the answer.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = fill(row.argv, values)
    before = snapshot(tmp_path)  # the work folder and what lies beside it: an escape shows here too

    if row.subprocess:
        done = alorectl(*argv, env=env, cwd=work)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        result = runner.invoke(app, argv)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        code, stdout, stderr = result.exit_code, result.stdout, result.stderr

    assert code == row.code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in (row.fragment,) if isinstance(row.fragment, str) else row.fragment:
        assert fill(fragment, values) in lines[0]
    for secret in row.absent:
        assert secret not in stdout + stderr
    assert snapshot(tmp_path) == before, "nothing is created or changed"
    assert not (tmp_path / "hub").exists() and not os.path.exists(work / "pwned")
