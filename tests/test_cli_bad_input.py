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
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import yaml
from typer.testing import CliRunner
from attacks import Planted, huge_header, huge_tensor_claim, rewrite, write_result
from ui_utils import FOREIGN_ENV, alorectl

from alorectl import db
from alorectl.cli import app
from alorectl.defaults import db_url

runner = CliRunner()

TRAIN = ["train", "--backbone", "demo", "--weights", "{demo_w}", "--task", "digits", "--data-root", "{data}",
         "--epochs", "1", "--device", "cpu", "--out", "{out}"]
BENCH_INFERENCE = ["bench", "inference", "--backbone", "vit_test", "--methods", "linear", "--device", "cpu"]
BENCH_SCALE = ["bench", "scale", "vtab"]
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

def used_folder(tmp: Path) -> None:
    (tmp / "used").mkdir()
    (tmp / "used" / "notes.txt").write_text("someone's files")


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


def key_twice(tmp: Path) -> None:
    (tmp / "twice.yaml").write_text("suite: vtab\nsuite: fgvc\n")


def malformed_yaml(tmp: Path) -> None:
    (tmp / "broken.yaml").write_text("suite: vtab\nmethods: [alore\n")


def recorded(tmp: Path, **result) -> None:
    """A leaderboard with one result, demo/digits/alore, of the sweep 'handmade', which logged to an MLflow
    server with a password (stored masked). The run folder holds real files of an untrained demo adapter."""
    run = tmp / "run"
    write_result(run)
    engine = db.connect(db_url(tmp))
    try:
        sweep = db.upsert_sweep(engine, "handmade", preset="demo", suite="vtab", status="done",
                                config={"tracking_uri": "http://alice:***@host:5000"})
        db.upsert_cell(engine, sweep, "demo", "digits", "alore", status="done")
        db.record_result(engine, sweep_id=sweep, backbone="demo", task="digits", method="alore", suite="vtab",
                         test_acc_mean=70.0, seeds=[42], artifact_uri=str(run), **result)
    finally:
        engine.dispose()


# --- a result or export folder whose files lie about themselves (alore.verify refuses each) -------------

def symlinked_weights(tmp: Path) -> None:
    """The recorded result's merged weights are a link to a file elsewhere (someone else's model)."""
    recorded(tmp)
    write_result(tmp / "foreign")
    (tmp / "run" / "merged.safetensors").unlink()
    (tmp / "run" / "merged.safetensors").symlink_to(tmp / "foreign" / "merged.safetensors")


def wrong_shape_weights(tmp: Path) -> None:
    """The merged weights have a head of 11 classes; the adapter says 10."""
    import torch

    recorded(tmp)
    rewrite(tmp / "run" / "merged.safetensors",
            lambda t, m: t.__setitem__("head.weight", torch.zeros(11, t["head.weight"].shape[1])))


def huge_tensor_adapter(tmp: Path) -> None:
    recorded(tmp)
    huge_tensor_claim(tmp / "run" / "adapter.safetensors")


def huge_header_adapter(tmp: Path) -> None:
    recorded(tmp)
    huge_header(tmp / "run" / "adapter.safetensors")


def metadata_not_tensors(tmp: Path) -> None:
    """The adapter's metadata claims rank 100000000 (a model of terabytes); its tensors are rank 4."""
    import json

    def claim(tensors: dict, metadata: dict) -> None:
        method = json.loads(metadata["method"])
        method["config"]["rank"] = 100_000_000
        metadata["method"] = json.dumps(method)

    recorded(tmp)
    rewrite(tmp / "run" / "adapter.safetensors", claim)


def foreign_adapter(tmp: Path) -> None:
    """The alore result's folder holds a LoRA adapter (someone else's file under this result's name)."""
    recorded(tmp)
    write_result(tmp / "run", method="lora")


def mlflow_runs_of_two_cells(tmp: Path) -> dict[str, str]:
    """An MLflow store in the work folder with a run of demo/digits/alore and one of demo/digits/lora, tagged
    as a sweep tags them; their ids by method."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.create_experiment("alore/handmade", artifact_location=(tmp / "mlartifacts").as_uri())
    return {m: client.create_run(experiment, tags={"backbone": "demo", "task": "digits", "method": m,
                                                   "sweep": "handmade"}).info.run_id for m in ("alore", "lora")}


def result_logged_to_another_cells_run(tmp: Path) -> None:
    """The alore result's row names the MLflow run of demo/digits/lora."""
    runs = mlflow_runs_of_two_cells(tmp)
    recorded(tmp, mlflow_run_id=runs["lora"], val_acc=60.0)


def export_folder_symlinked_adapter(tmp: Path) -> None:
    """An export folder received from someone: its adapter is a link to a file elsewhere."""
    write_result(tmp / "foreign")
    (tmp / "received").mkdir()
    (tmp / "received" / "adapter.safetensors").symlink_to(tmp / "foreign" / "adapter.safetensors")


def export_card_names_another_cells_run(tmp: Path) -> None:
    """An export folder of demo/digits/alore whose card names the MLflow run of demo/digits/lora."""
    import json
    import shutil

    runs = mlflow_runs_of_two_cells(tmp)
    write_result(tmp / "cell")
    (tmp / "received").mkdir()
    shutil.copy(tmp / "cell" / "adapter.safetensors", tmp / "received" / "adapter.safetensors")
    (tmp / "received" / "card.json").write_text(json.dumps({"backbone": "demo", "task": "digits", "method": "alore",
                                                            "mlflow_run_id": runs["lora"]}))


def studies_of_other(tmp: Path) -> None:
    """A work folder whose Optuna journal holds the studies of a sweep 'other' only."""
    import optuna

    from alorectl.sweep.studies import open_journal

    optuna.create_study(study_name="other/demo/digits/alore", storage=open_journal(tmp), direction="maximize")


def mlflow_store(tmp: Path) -> None:
    (tmp / "mlflow.db").write_bytes(b"")  # where `alorectl ui` looks for the store; never opened here


def recorded_and_out_taken(tmp: Path) -> None:
    recorded(tmp)
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")



def recorded_other_methods(tmp: Path) -> None:
    """The sweep 'p' (the name the table's preset file gives) recorded with other methods than the row's."""
    engine = db.connect(db_url(tmp))
    try:
        sweep = db.upsert_sweep(engine, "p", preset="p", suite="vtab", status="failed",
                                config={"methods": ["alore"], "suite": "vtab"})
        db.upsert_cell(engine, sweep, "demo", "digits", "alore", status="failed")
    finally:
        engine.dispose()
    (tmp / "locks").mkdir(mode=0o700)
    (tmp / "locks" / "p.lock").write_text("1\n")  # left by the driver that recorded it


def truncated_weights(tmp: Path, demo: Path) -> None:
    data = (demo / "demo.safetensors").read_bytes()
    (tmp / "trunc.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted copy


def corrupt_first_image(tmp: Path, demo: Path) -> None:
    """A copy of the digits task whose first training image is cut short."""
    shutil.copytree(demo / "vtab-1k" / "digits", tmp / "bad" / "digits")
    first = (tmp / "bad" / "digits" / "train800.txt").read_text().split()[0]
    image = tmp / "bad" / "digits" / first
    image.write_bytes(image.read_bytes()[:40])


def readonly_leaderboard(tmp: Path) -> None:
    recorded(tmp)
    Path(db_url(tmp).removeprefix("sqlite:///")).chmod(0o444)


def corrupt_mlflow_store(tmp: Path) -> None:
    (tmp / "mlflow.db").write_bytes(b"not an SQLite file at all, 48 bytes of nonsense")


def not_ray() -> str:
    """A port on 127.0.0.1 that accepts connections (the kernel completes them) and never answers: not Ray."""
    global _LISTENER
    if _LISTENER is None:
        _LISTENER = socket.socket()
        _LISTENER.bind(("127.0.0.1", 0))
        _LISTENER.listen(8)
    return f"127.0.0.1:{_LISTENER.getsockname()[1]}"


_LISTENER: socket.socket | None = None


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
    # alorectl bench scale (checked before a cluster starts or a folder is made)
    Row("bench-scale-slots-0", [*BENCH_SCALE, "--slots", "0"], "--slots must be >= 1, got 0"),
    Row("bench-scale-nodes-over-slots", [*BENCH_SCALE, "--slots", "2", "--nodes", "3"],
        "--nodes must be between 1 and --slots (2), got 3"),
    Row("bench-scale-trial-seconds-0", [*BENCH_SCALE, "--slots", "2", "--trial-seconds", "0"],
        "--trial-seconds must be > 0, got 0.0"),
    Row("bench-scale-epochs-0", [*BENCH_SCALE, "--slots", "2", "--epochs", "0"], "--epochs must be >= 1, got 0"),
    Row("bench-scale-kill-fraction", [*BENCH_SCALE, "--slots", "2", "--kill-driver-at", "1.5"],
        "--kill-driver-at must be a fraction between 0 and 1 (exclusive), got 1.5"),
    Row("bench-scale-two-faults", [*BENCH_SCALE, "--slots", "2", "--nodes", "2", "--kill-driver-at", "0.5",
                                   "--kill-node-at", "0.5"], "choose one fault per run"),
    Row("bench-scale-kill-node-one-node", [*BENCH_SCALE, "--slots", "2", "--kill-node-at", "0.5"],
        "--kill-node-at needs --nodes of 2 or more (the head stays), got 1"),
    Row("bench-scale-workdir-a-file", [*BENCH_SCALE, "--slots", "2", "--workdir", "{file}"],
        "is not an empty folder; name a new or empty one"),
    Row("bench-scale-workdir-not-empty", [*BENCH_SCALE, "--slots", "2", "--workdir", "{tmp}/used"],
        "is not an empty folder; name a new or empty one", setup=used_folder),
    Row("bench-scale-unknown-backbone", [*BENCH_SCALE, "--slots", "2", "--backbones", "vit_q"],
        ("vit_q", "vit_b")),
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
    Row("preset-batch-size-0", SWEEP, "train.batch_size: input should be greater than or equal to 1, got 0",
        preset={"train": {"batch_size": 0}}),
    Row("preset-vpt-prompts-negative", SWEEP, "vpt with prompts=-10: prompts must be >= 1, got -10",
        preset={"methods": ["vpt"], "method_space": {"vpt": {"prompts": [5, -10]}}}),
    Row("preset-trials-not-int", SWEEP, "search.trials: input should be a valid integer, got 'abc'",
        preset={"search": {"trials": "abc"}}),
    Row("preset-cpus-not-number", SWEEP, "resources.cpus_per_trial: input should be a valid number, got 'x'",
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
        "preset {tmp}/p.yaml: search.algorithm: input should be 'optuna' or 'grid', got 'random'",
        preset={"search": {"algorithm": "random"}}),
    Row("preset-data-root-missing", SWEEP, "data root not found: /nonexistent/vtab",
        preset={"data_root": "/nonexistent/vtab"}),
    Row("preset-seeds-repeated", [*SWEEP, "--seeds", "42,42"], "final.seeds has a repeated seed: [42, 42]",
        preset={}),
    Row("preset-key-twice", ["sweep", "{tmp}/twice.yaml", "--workdir", "{tmp}"],
        "preset {tmp}/twice.yaml line 2: not valid YAML (key 'suite' given twice)", setup=key_twice),
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
    # alorectl sweep: a rerun under a recorded name continues its plan or is refused (issue 20, theme 1)
    Row("sweep-rerun-other-inputs", SWEEP,
        ("sweep 'p' was recorded with other inputs (methods: ['alore'] -> ['linear'])", "--name NEW",
         "--force-new"), preset={}, setup=recorded_other_methods),
    # alorectl sweep: impossible requests and broken files, refused before Ray starts (theme 2)
    Row("sweep-gpus-none-here", [*SWEEP, "--gpus-per-trial", "64"], ("--gpus-per-trial 64 but this machine has",
                                                                     "a trial could never start"), preset={}),
    Row("sweep-cpus-too-many", [*SWEEP, "--cpus-per-trial", "4096"],
        ("--cpus-per-trial 4096 is more than this machine's", "CPUs"), preset={}),
    Row("sweep-weights-truncated", SWEEP, ("trunc.safetensors is not a valid safetensors weights file",),
        preset={"weights": {"demo": "{tmp}/trunc.safetensors"}}, setup=truncated_weights),
    Row("sweep-image-corrupt", SWEEP, ("task digits:", "cannot decode image", "alorectl data check --root {tmp}/bad"),
        preset={"data_root": "{tmp}/bad"}, setup=corrupt_first_image),
    Row("sweep-tracking-ftp", [*SWEEP, "--tracking-uri", "ftp://host/mlruns"],
        "unsupported tracking URI scheme 'ftp' in 'ftp://host/mlruns'; valid choices: http, https, sqlite",
        preset={}),
    Row("sweep-tracking-file-store", [*SWEEP, "--tracking-uri", "file://{tmp}/mlruns"],
        ("is an MLflow file store", "sqlite:///PATH/mlflow.db"), preset={}),
    Row("sweep-ray-client-missing", [*SWEEP, "--address", "ray://127.0.0.1:10001"],
        ("uses Ray Client, which is not installed here", "pip install 'ray[client]'"), preset={}),
    Row("sweep-address-not-ray", [*SWEEP, "--address", "{not_ray}"],
        ("{not_ray} answers but is not a Ray cluster",), preset={}),
    # alorectl sweep: stores it cannot write or read (theme 3)
    Row("sweep-leaderboard-read-only", SWEEP, ("leaderboard.db is read-only", "make it writable"), preset={},
        setup=readonly_leaderboard),
    Row("sweep-mlflow-store-corrupt", SWEEP, ("mlflow.db is not an SQLite database",), preset={},
        setup=corrupt_mlflow_store),
    Row("leaderboard-plot-suffix", [*BOARD, "--backbone", "demo", "--plot", "{tmp}/p.gif"],
        "unknown --plot file type '.gif'; valid choices: .pdf, .png, .svg", setup=recorded),
    Row("leaderboard-plot-folder", [*BOARD, "--backbone", "demo", "--plot", "{tmp}/run.png"],
        "--plot {tmp}/run.png is a folder", setup=lambda tmp: (tmp / "run.png").mkdir()),
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
    Row("export-register-without-merged-weights", [*EXPORT, "--task", "digits", "--register"],
        "--register: the merged weights of demo/digits/alore are missing",
        setup=lambda tmp: (recorded(tmp), (tmp / "run" / "merged.safetensors").unlink())),
    # export and analyze check every file against what it claims before publishing or logging it (issue 20)
    Row("export-symlinked-weights", [*EXPORT, "--task", "digits"],
        ("refusing {tmp}/run/merged.safetensors: it is a symbolic link", "{tmp}/foreign/merged.safetensors"),
        setup=symlinked_weights),
    Row("export-weights-wrong-shapes", [*EXPORT, "--task", "digits"],
        ("refusing {tmp}/run/merged.safetensors: its tensors are not those of demo with 10 classes",
         "head.weight (11, 64) vs (10, 64)"), setup=wrong_shape_weights),
    Row("export-header-claims-huge-tensor", [*EXPORT, "--task", "digits"],
        "refusing {tmp}/run/adapter.safetensors: tensor 'w' claims 4398046511104 bytes", setup=huge_tensor_adapter),
    Row("export-huge-header", [*EXPORT, "--task", "digits"],
        "refusing {tmp}/run/adapter.safetensors: its safetensors header claims 1099511627776 bytes",
        setup=huge_header_adapter),
    Row("export-adapter-metadata-not-its-tensors", [*EXPORT, "--task", "digits"],
        ("refusing {tmp}/run/adapter.safetensors: its tensors are not those of its metadata", "'rank': 100000000",
         "shape mismatch"), setup=metadata_not_tensors),
    Row("export-foreign-adapter", [*EXPORT, "--task", "digits"],
        "it holds demo/digits/lora, not the result demo/digits/alore it is recorded as", setup=foreign_adapter),
    Row("export-register-into-another-cells-run", [*EXPORT, "--task", "digits", "--register"],
        ("belongs to demo/digits/lora, not to demo/digits/alore", "refusing to log into another cell's run"),
        setup=result_logged_to_another_cells_run),
    Row("analyze-from-symlinked-adapter", ["analyze", "experts", "--from", "{tmp}/received", "--weights", "{demo_w}",
                                           "--data-root", "{data}", "--device", "cpu", "--workdir", "{tmp}"],
        "refusing {tmp}/received/adapter.safetensors: it is a symbolic link", setup=export_folder_symlinked_adapter),
    Row("analyze-store-symlinked-weights", ["analyze", "experts", "--backbone", "demo", "--task", "digits",
                                            "--device", "cpu", "--workdir", "{tmp}"],
        "refusing {tmp}/run/merged.safetensors: it is a symbolic link", setup=symlinked_weights),
    Row("analyze-card-names-another-cells-run", ["analyze", "experts", "--from", "{tmp}/received", "--weights",
                                                 "{demo_w}", "--data-root", "{data}", "--device", "cpu",
                                                 "--workdir", "{tmp}"],
        ("belongs to demo/digits/lora, not to demo/digits/alore", "refusing to log into another cell's run"),
        setup=export_card_names_another_cells_run),
    Row("analyze-search-no-studies", ["analyze", "search", "--backbone", "demo", "--task", "digits", "--method",
                                      "alore", "--workdir", "{tmp}"], ("no Optuna studies in {tmp}", "run a sweep")),
    Row("analyze-search-bad-method", ["analyze", "search", "--backbone", "demo", "--task", "digits", "--method",
                                      "../x", "--workdir", "{tmp}"], ("bad method name '../x'", BAD_NAME)),
    Row("sweep-warm-start-no-studies", [*SWEEP, "--warm-start-from", "old"],
        "--warm-start-from old: no Optuna studies in {tmp}", preset={}),
    Row("sweep-warm-start-bad-name", [*SWEEP, "--warm-start-from", "../x"], ("bad sweep name '../x'", BAD_NAME),
        preset={}),
    Row("sweep-warm-start-unknown", [*SWEEP, "--warm-start-from", "old"],
        "unknown sweep to warm-start from 'old'; valid choices: other", preset={}, setup=studies_of_other),
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
              "tmp": work, "file": work / "a-file", "not_ray": not_ray() if "{not_ray}" in row.argv else "",
              "busy": busy_port}
    if row.setup:
        row.setup(*(work, demo_dir)[: row.setup.__code__.co_argcount])
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
