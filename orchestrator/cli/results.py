"""``alorectl leaderboard`` and ``alorectl export``: reading a sweep's results.

Both only read: they open the store with :func:`db.open_existing`, which
never creates a database (an empty work folder stays empty) and never
migrates one.  ``export`` writes its folder whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import Engine

from alorectl import db
from alore.backbones import create_backbone, data_config, resolve
from alore.data import SUITES
from alore.api import mergeable_methods
from alore.errors import AloreError, ConfigError, UnknownChoiceError
from alorectl.results.export import timm_preprocessing
from alorectl.results.leaderboard import build, check_choices

from alorectl import defaults
from .app import console, fail
from alorectl.results.render import SIMULATED_LABEL, board_table
from .options import DEFAULT_WORKDIR, DbUrl, TrackingUri, Workdir

FORMATS = ("table", "markdown", "csv", "json")
#: What an export folder holds; ``--force`` replaces exactly these.
EXPORT_FILES = ("model.safetensors", "adapter.safetensors", "card.json")


@contextmanager
def open_results(workdir: Path, db_flag: str | None,
                 remedy: str = "run one first: alorectl sweep demo") -> Iterator[Engine]:
    """The results database, read-only; a work folder where no sweep ran is one clear line (ending in
    ``remedy``), not a new file. Closed on the way out: an open SQLite connection keeps its ``-wal``/``-shm``
    files next to the database."""
    url = defaults.db_url(workdir, db_flag)
    try:
        engine = db.open_existing(url)
    except db.DatabaseNotFoundError:
        where = f"this workdir ({workdir.resolve()})" if db_flag is None else f"the database {db.mask_url(url)}"
        raise AloreError(f"no sweep has run in {where}; {remedy}") from None
    try:
        yield engine
    finally:
        engine.dispose()


def leaderboard(
    backbone: Annotated[str, typer.Option(help="backbone whose leaderboard to show")] = "vit_b",
    suite: Annotated[str, typer.Option(help="vtab or fgvc")] = "vtab",
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json")] = "table",
    plot: Annotated[Path | None, typer.Option(help="draw mean accuracy vs trainable parameters (paper fig. 1) to PNG")] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,  # accepted like every sweep-facing command; unused here
    db_flag: DbUrl = None,
    simulated: Annotated[bool, typer.Option(
        "--simulated", help="only the results of simulated sweeps (alorectl bench scale), labelled as such")] = False,
) -> None:
    """The paper's table layout: a row per method, a column per task, group means, Params(M), best marked."""
    if fmt not in FORMATS:
        raise UnknownChoiceError("format", fmt, FORMATS)
    if suite not in SUITES:  # typed values first, before the database is even looked for
        raise UnknownChoiceError("suite", suite, SUITES)
    if plot is not None:
        check_plot_path(plot)
    with open_results(workdir, db_flag) as engine:
        check_choices(engine, backbone, suite, simulated)
        board = build(engine, backbone, suite, simulated)
    if not board.rows:
        fail(f"no results for backbone {backbone!r} ({suite}) in {db.mask_url(defaults.db_url(workdir, db_flag))}; "
             "run a sweep first: alorectl sweep demo")
    if simulated and fmt != "table":  # the table says it in its title; other formats get a line on stderr
        sys.stderr.write(f"{SIMULATED_LABEL}\n")
    if fmt == "markdown":
        sys.stdout.write(db.to_markdown(board) + "\n")
    elif fmt == "csv":
        sys.stdout.write(db.to_csv(board))
    elif fmt == "json":
        sys.stdout.write(db.to_json(board) + "\n")
    else:
        console.print(board_table(board, backbone, suite, simulated))
    if plot is not None:
        draw(board, plot, backbone)


PLOT_SUFFIXES = (".pdf", ".png", ".svg")


def check_plot_path(path: Path) -> None:
    """``--plot`` names a new or existing file of a format we draw, in a folder we can write."""
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UnknownChoiceError("--plot file type", path.suffix or path.name, PLOT_SUFFIXES)
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a folder; pass a file, e.g. {path / 'leaderboard.png'}")
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--plot {path}: cannot write there ({folder} is not a folder you can write); "
                          "pass a writable FILE.png")


def draw(board: Any, path: Path, backbone: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = db.to_records(board)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in records:
        x, y = r.get("params_m"), r.get("all_mean")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60, marker="*" if r["method"].startswith("alore") else "o")
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("trainable parameters (M)")
    ax.set_ylabel("mean top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs parameters, {backbone}")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise ConfigError(f"cannot write the plot to {path}: {err.strerror or err}; pass --plot a writable "
                          "FILE.png") from None
    console.print(f"plot written to {path}", highlight=False, markup=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kwargs_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


def export(
    backbone: Annotated[str, typer.Option(help="backbone of the result")] = "vit_b",
    task: Annotated[str, typer.Option(help="task of the result")] = "cifar",
    method: Annotated[str, typer.Option(help="a method, or 'best' (chosen by val accuracy)")] = "alore",
    out: Annotated[Path, typer.Option(help="output folder (new or empty)")] = Path("export"),
    force: Annotated[bool, typer.Option("--force", help="replace an earlier export in a non-empty --out")] = False,
    register: Annotated[bool, typer.Option("--register", help="also register it in MLflow's model registry as "
                                           "alore-<backbone>-<task>, alias 'best' when its val accuracy is the best "
                                           "(use with --method best)")] = False,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """Write model.safetensors (merged into plain timm), adapter.safetensors and card.json."""
    with open_results(workdir, db_flag) as engine:
        fake = db.simulated_only(engine, backbone, task, method)
        if fake is not None:
            raise AloreError(f"{backbone}/{task}/{method} has only a simulated result (sweep {fake!r}, made by "
                             "alorectl bench scale): its weights are stand-ins, there is nothing to export")
        row = db.find_result(engine, backbone, task, method)
    source = Path(row.artifact_uri or "")
    if not (source / "adapter.safetensors").is_file():
        raise AloreError(f"the files of {backbone}/{task}/{row.method} are missing from {source}")
    if out.exists() and not out.is_dir():
        raise AloreError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise AloreError(f"--out {out} is not empty; name a new folder, or pass --force to replace its export files")
    spec = resolve(backbone)
    metrics = json.loads((source / "metrics.json").read_text()) if (source / "metrics.json").is_file() else {}
    classes = int(metrics.get("num_classes") or row.config.get("num_classes") or 0)
    # What the run's data pipeline used: fit() reads data_config of this same backbone (no weights needed).
    dc = data_config(create_backbone(backbone, classes, device="meta"))
    preprocessing = timm_preprocessing(row.suite, dc["image_size"], dc["mean"], dc["std"])
    merged = source / "merged.safetensors"
    if register:  # refused before anything is written
        _check_registrable(backbone, task, row, merged)
    overlay = {"file": "model.safetensors", "num_classes": classes, **preprocessing}
    kwargs = dict(spec.kwargs)
    load = (f"timm.create_model({spec.timm_name!r}, pretrained=True, num_classes={classes}, "
            f"pretrained_cfg_overlay=dict({_kwargs_text(overlay)})"
            + (f", {_kwargs_text(kwargs)}" if kwargs else "") + ")")
    card = {
        "backbone": backbone, "timm_name": spec.timm_name, "timm_kwargs": kwargs, "num_classes": classes,
        "task": task, "suite": row.suite, "method": row.method, "config": row.config, "seeds": row.seeds,
        "epochs": row.epochs, "val_acc": row.val_acc, "test_acc": row.test_acc_mean, "test_acc_std": row.test_acc_std,
        "weights_test_acc": metrics.get("test_acc"),  # these weights' own run (test_acc: mean over seeds)
        "trainable_params": row.trainable_params, "mlflow_run_id": row.mlflow_run_id,
        "mlflow_tracking_uri": db.urls.mask_text(defaults.tracking_uri(workdir, tracking_uri)),
        "merged": merged.is_file(),
        "preprocessing": preprocessing,
        "pretrained_cfg_overlay": overlay if merged.is_file() else None,
        "load": load if merged.is_file() else
        f"alore.apply(alore.create_backbone({backbone!r}, {classes}, weights=BACKBONE_WEIGHTS), {row.method!r}, "
        f"**card['config']['method_options']); alore.api.load_adapter(model, 'adapter.safetensors')",
        "transform": "timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))"
        if merged.is_file() else "timm.data.create_transform(**card['preprocessing'])",
        "note": "num_classes must be in pretrained_cfg_overlay too, or timm drops the trained head; the "
                "preprocessing fields make timm's eval transform the one the model was trained and scored with",
    }
    with _staging(out) as stage:
        files: dict[str, str] = {}
        if merged.is_file():
            shutil.copy2(merged, stage / "model.safetensors")
        shutil.copy2(source / "adapter.safetensors", stage / "adapter.safetensors")
        for name in ("model.safetensors", "adapter.safetensors"):
            if (stage / name).is_file():
                files[name] = _sha256(stage / name)
        card["sha256"] = files
        (stage / "card.json").write_text(json.dumps(card, indent=2, default=str))
        _publish(stage, out)
    console.print(f"exported {backbone}/{task}/{row.method} (test {row.test_acc_mean:.2f}%) to {out}", highlight=False,
                  markup=False)
    if register:
        _register(backbone, task, row, source, card, defaults.tracking_uri(workdir, tracking_uri))
    if card["merged"]:
        console.print(f"load it with plain timm:\n  {load}", highlight=False, markup=False,
                      soft_wrap=True)  # one line to copy


def _check_registrable(backbone: str, task: str, row: Any, merged: Path) -> None:
    if row.method not in mergeable_methods():
        raise AloreError(f"--register: {row.method} cannot be merged into plain timm, so {backbone}/{task}/"
                         f"{row.method} has no MLflow model; mergeable methods: {', '.join(mergeable_methods())}")
    if not merged.is_file():
        raise AloreError(f"--register: the merged weights of {backbone}/{task}/{row.method} are missing: {merged}")
    if not row.mlflow_run_id:
        raise AloreError(f"--register: {backbone}/{task}/{row.method} is not in MLflow yet; "
                         "alorectl sweep resume NAME logs it")
    if row.val_acc is None:
        raise AloreError(f"--register: {backbone}/{task}/{row.method} has no val accuracy to rank it by")


def _register(backbone: str, task: str, row: Any, source: Path, card: dict[str, Any], uri: str) -> None:
    """The result's MLflow model (logged now if its sweep predates models) registered; the alias moved if best."""
    from alorectl.tracking.client import Tracker
    from alorectl.tracking.models import ALIAS, has_model, log_model, register

    tracker = Tracker(uri)
    try:
        if not has_model(tracker.client, row.mlflow_run_id):
            log_model(tracker.client, row.mlflow_run_id, backbone, row.suite, source,
                      {k: card[k] for k in ("backbone", "task", "method", "val_acc", "test_acc", "suite")})
        done = register(tracker.client, backbone, task, row.mlflow_run_id, row.val_acc, tags={"method": row.method})
    except Exception as err:  # the server refused, or is away: one line, no credentials
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise AloreError(db.urls.mask_text(f"--register: MLflow refused: {first}")[:400]) from None
    where = f"models:/{done.name}@{ALIAS}"
    console.print(f"registered {done.name} version {done.version}; " +
                  (f"{where} is this model" if done.moved else f"{where} stays version {done.best_version} "
                                                                "(better val accuracy)"), highlight=False, markup=False)


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private folder next to ``out`` (same file system: moving its files in is a rename), removed on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # gone already when it became ``out``


def _publish(stage: Path, out: Path) -> None:
    """Move the staged export into ``out``: a new folder is one rename; into an existing one, the weights
    first and card.json last, and a file of an earlier export that this one lacks (model.safetensors of
    a merged method, now an unmerged one) is removed, so the folder never disagrees with its card."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp made it owner-only; an export is an ordinary folder
    if not out.exists():
        try:
            stage.rename(out)
            return
        except OSError:  # created meanwhile: move the files in below
            out.mkdir(exist_ok=True)
    staged = {p.name for p in stage.iterdir()}
    for name in sorted(staged - {"card.json"}):
        os.replace(stage / name, out / name)
    for name in set(EXPORT_FILES) - staged:
        (out / name).unlink(missing_ok=True)
    os.replace(stage / "card.json", out / "card.json")
