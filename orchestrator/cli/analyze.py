"""``alorectl analyze``: the paper's three analyses of a finished cell (table 22, figures 4/7 and 5).

Each command finds the cell's final adapter (the newest result of backbone/task/
method in the leaderboard database, or ``--from DIR``: a sweep cell folder, an
``alorectl export`` folder or an ``alorectl train`` run folder), rebuilds the
adapted model with the backbone weights and data the run used, computes with
:mod:`alore.analysis`, prints or draws, writes its files under ``--out`` and
logs them to the cell's MLflow run (``analysis/``) when the cell has one.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from alore.data import DEMO_TASKS
from alore import verify
from alore.errors import AloreError, ConfigError, UnknownChoiceError, WeightsError
from alore.files import write_text

from .app import App, Lazy, console, err_console, split_csv
from alorectl.security import check_name, inside
from .options import DEFAULT_WORKDIR, DbUrl, TrackingUri, Workdir
from .options import tracking_uri as resolve_tracking_uri

analysis, backbones = Lazy("alore.analysis"), Lazy("alore.backbones")   # torch: imported when a command runs
devices, registry = Lazy("alore.device"), Lazy("alore.methods")

app = App(help="The paper's analyses of a finished run: experts (table 22), attention maps (figures 4, 7), "
               "t-SNE of [CLS] embeddings (figure 5).")

FORMATS = ("table", "json", "csv")

Backbone = Annotated[str | None, typer.Option(help="backbone of the cell (read from the adapter with --from)")]
Task = Annotated[str | None, typer.Option(help="task of the cell (read from the adapter with --from)")]
ExpertMethod = Annotated[str | None, typer.Option(help="alore or alore_attn (default alore)")]
SweepName = Annotated[str | None, typer.Option("--sweep", help="take the result of this sweep (default: the newest)")]
Weights = Annotated[str | None, typer.Option(
    help="backbone weights file (default: the run's own; demo: <workdir>/data/demo.safetensors)")]
DataRoot = Annotated[Path | None, typer.Option(
    help="data root the run used (default: the run's own; demo: <workdir>/data/vtab-1k)")]
Out = Annotated[Path | None, typer.Option(
    help="output folder (default: DIR/analysis with --from DIR, else <workdir>/analysis/<backbone>/<task>)")]
From = Annotated[Path | None, typer.Option("--from", help="a run, sweep cell or export folder (adapter.safetensors)")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]
BatchSize = Annotated[int, typer.Option(help="images per forward pass")]


@dataclasses.dataclass(frozen=True)
class CellFiles:
    """A finished cell: its adapter and everything needed to rebuild and score it."""

    folder: Path
    adapter: analysis.AdapterInfo
    task: str
    suite: str
    weights: str | None
    data_root: Path
    seed: int
    mlflow_run_id: str | None
    from_folder: bool  # --from: outputs go next to it, not into the work folder


# ---- finding the cell -------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a result or export folder: never through a link, bounded (:func:`alore.verify.read_json`)."""
    return verify.read_json(path)


def _from_folder(folder: Path) -> tuple[analysis.AdapterInfo, dict[str, Any], dict[str, Any], str | None]:
    """(adapter, stored config, metrics, MLflow run) of a run, cell or export folder, each file checked against
    what it claims (an export's card against its adapter and weights) before anything is built from it."""
    info = analysis.read_adapter_info(folder)
    if verify.exists(folder / "card.json"):  # an export folder: the card's claims, the weights, their sha256
        verify.export_folder(folder, "card.json", analysis.load.ADAPTER, "model.safetensors")
    card, result = _read_json(folder / "card.json"), _read_json(folder / "result.json")  # export / sweep cell
    config = dict(card.get("config") or result.get("config") or {})
    for key in ("suite", "seeds"):
        config.setdefault(key, card.get(key, result.get(key)))
    return info, config, _read_json(folder / "metrics.json"), card.get("mlflow_run_id")


def _from_store(workdir: Path, db_flag: str | None, backbone: str, task: str, method: str,
                sweep: str | None) -> tuple[Path, Any]:
    """(cell folder, result row) from the leaderboard database; never creates one."""
    from alorectl import db

    from alorectl.results.store import open_results

    with open_results(workdir, db_flag, remedy="pass --from DIR") as engine:
        row = db.find_result(engine, backbone, task, method, sweep)
    folder = Path(row.artifact_uri or "")
    if not row.artifact_uri or not verify.exists(folder / analysis.load.ADAPTER):
        raise WeightsError(f"the files of {backbone}/{task}/{method} are missing from {row.artifact_uri!r}; "
                           "pass --from DIR")
    # The result folder's files are the result the row records (no links, the tensors their metadata implies).
    verify.run_files(folder, row.backbone, row.task, row.method, analysis.load.ADAPTER, "merged.safetensors")
    return folder, row


def _weights_arg(recorded: Any) -> str | None:
    """The ``weights`` argument of ``create_backbone`` for what a run recorded: None/"random" (a random
    backbone, rebuilt from the run's seed), "timm:<tag>" (timm's pretrained weights) or a file."""
    if recorded in (None, "random"):
        return None
    return "timm" if str(recorded).startswith("timm:") else str(recorded)


def locate(workdir: Path, db_flag: str | None, backbone: str | None, task: str | None, method: str | None,
           sweep: str | None, source: Path | None, weights: str | None, data_root: Path | None,
           experts_for: str | None = None) -> CellFiles:
    """Where the cell's files are and how to rebuild it; every name is checked before anything is read.

    ``experts_for``: the analysis that needs ALoRE's experts (refuses any other adapter).
    """
    for kind, value in (("backbone", backbone), ("task", task), ("method", method), ("sweep", sweep)):
        if value is not None:
            check_name(kind, value)
    if backbone is not None:
        backbones.resolve(backbone)
    if method is not None:
        registry.get_method(method)
    if source is not None:
        info, config, metrics, run_id = _from_folder(source)
        stored = {"backbone": info.backbone, "task": info.task or metrics.get("task"), "method": info.method}
        for kind, given in (("backbone", backbone), ("task", task), ("method", method)):
            if given is not None and given != stored[kind]:
                raise ConfigError(f"{source} holds {stored['backbone']}/{stored['task']}/{stored['method']}, "
                                  f"not --{kind} {given}")
        folder = source
    else:
        if backbone is None or task is None:
            raise ConfigError("pass --backbone and --task (or --from DIR)")
        folder, row = _from_store(workdir, db_flag, backbone, task, method or "alore", sweep)
        info, config, metrics, run_id = (analysis.read_adapter_info(folder), dict(row.config or {}),
                                         _read_json(folder / "metrics.json"), row.mlflow_run_id)
        config.setdefault("seeds", row.seeds)
        config.setdefault("suite", row.suite)
    if experts_for and not info.has_experts:
        raise ConfigError(f"{experts_for} needs an alore or alore_attn adapter; {folder} holds {info.method!r}")
    name = info.task or metrics.get("task") or config.get("task")
    if not name:
        raise ConfigError(f"{folder}: the adapter does not say which task it was trained on; pass --task")
    check_name("task", name)
    demo_weights = workdir / "data" / "demo.safetensors"
    if weights is None:
        if "weights" in config:  # a sweep's stored config
            weights = _weights_arg(config["weights"])
        elif "weights" in metrics:  # what train.fit recorded
            weights = _weights_arg(metrics["weights"])
        elif info.backbone == "demo" and demo_weights.is_file():
            weights = str(demo_weights)
        else:
            raise ConfigError(f"the weights {info.backbone} started from are unknown; pass --weights FILE")
    if data_root is None:
        stored_root = config.get("data_root")
        if stored_root:
            data_root = Path(stored_root)
        elif name in DEMO_TASKS:
            data_root = workdir / "data" / "vtab-1k"
        else:
            raise ConfigError(f"the data root of {name!r} is unknown; pass --data-root DIR")
    seeds = config.get("seeds") or []
    seed = int(metrics.get("seed") or config.get("seed") or (min(seeds) if seeds else 42))
    return CellFiles(folder, info, name, str(config.get("suite") or metrics.get("suite") or "vtab"), weights,
                     Path(data_root), seed, run_id, source is not None)


def rebuild(cell: CellFiles, device: str, limit: int | None = None) -> tuple[Any, Any, Any]:
    """(model, eval split, autocast) of ``cell`` on ``device``."""
    import torch

    dev = devices.pick_device(device)
    if cell.weights is None:
        torch.manual_seed(cell.seed)  # a run without weights started from this seed's random backbone (train.fit)
    model = analysis.load_model(cell.adapter, cell.weights, dev)
    split = analysis.load_eval_split(model, cell.data_root, cell.suite, cell.task, cell.adapter.num_classes, dev)
    return model, analysis.subset(split, limit), devices.autocast_for(dev)


def output_folder(out: Path | None, workdir: Path, cell: CellFiles) -> Path:
    """``--out``, else ``DIR/analysis`` for ``--from DIR``, else ``<workdir>/analysis/<backbone>/<task>``."""
    if out is None:
        out = (cell.folder / "analysis" if cell.from_folder
               else inside(workdir, "analysis", cell.adapter.backbone, cell.task))
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- logging the result -------------------------------------------------------------------------

def mlflow_runs(workdir: Path, flag: str | None, cells: list[CellFiles]) -> Any:
    """The tracker of the cells' MLflow runs, each run checked to be its own cell's (backbone, task and method
    tags) before anything is computed or logged: a card or row naming another cell's run is refused (exit 2).
    None when no cell has a run, or the store is missing or unreachable (one warning: the analysis is kept
    locally only)."""
    runs = [c for c in cells if c.mlflow_run_id]
    if not runs:
        return None
    from alorectl.db.urls import mask_text

    uri = resolve_tracking_uri(workdir, flag)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        warn(f"MLflow store {mask_text(uri)} not found; the analysis is kept locally only")
        return None
    from alorectl.tracking.client import Tracker, TrackingUnavailable, check_run_of

    tracker = Tracker(uri)  # the one MLflow writer: short retries, credentials off every URL
    try:
        for cell in runs:
            check_run_of(tracker, cell.mlflow_run_id, cell.adapter.backbone, cell.task, cell.adapter.method)
    except TrackingUnavailable as err:  # an unreachable or refusing store must not lose the local output
        warn(f"could not reach MLflow at {mask_text(uri)} ({err}); the analysis is kept locally only")
        return None
    return tracker


def log_to_mlflow(tracker: Any, run_id: str | None, paths: list[Path]) -> None:
    """Attach ``paths`` to the cell's MLflow run (checked by :func:`mlflow_runs`) under ``analysis/``; one warning
    line if that fails."""
    if tracker is None or run_id is None:
        return
    from alorectl.tracking.client import TrackingUnavailable

    try:
        for path in paths:
            tracker.artifact(run_id, path, "analysis")
    except TrackingUnavailable as err:  # an unreachable or refusing store must not lose the local output
        warn(f"could not log to MLflow run {run_id} ({err}); the analysis is kept locally only")
        return
    err_console.print(f"logged {len(paths)} file(s) to MLflow run {run_id} (artifacts/analysis)", highlight=False,
                      markup=False)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


# ---- the commands ---------------------------------------------------------------------------------

@app.command("experts")
def experts(
    backbone: Backbone = None,
    task: Task = None,
    method: ExpertMethod = None,
    sweep: SweepName = None,
    source: From = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    weights: Weights = None,
    data_root: DataRoot = None,
    out: Out = None,
    device: Device = "auto",
    batch_size: BatchSize = 256,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """Test accuracy with Single-i, Increment-i and Sliced-i experts kept (paper table 22).

    Examples:

      alorectl analyze experts --backbone demo --task digits

      alorectl analyze experts --from best/
    """
    if fmt not in FORMATS:
        raise UnknownChoiceError("format", fmt, FORMATS)
    cell = locate(workdir, db_flag, backbone, task, method, sweep, source, weights, data_root,
                  experts_for="the expert analysis")
    tracker = mlflow_runs(workdir, tracking_uri, [cell])
    model, split, autocast = rebuild(cell, device)
    table = analysis.expert_table(model, split, batch_size, autocast)
    folder = output_folder(out, workdir, cell)
    stem = f"experts-{cell.adapter.method}"
    record = {"backbone": cell.adapter.backbone, "task": cell.task, "method": cell.adapter.method,
              "source": str(cell.folder), "test_images": len(split), **table.to_dict()}
    files = [write_text(folder / f"{stem}.json", json.dumps(record, indent=2) + "\n"),
             write_text(folder / f"{stem}.csv", table.to_csv())]
    if fmt == "json":
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(table.to_csv())
    else:
        view = Table(title=f"Experts of {cell.adapter.method} on {cell.adapter.backbone}/{cell.task}: top-1 test "
                           f"accuracy (%), {len(split)} images; all {table.experts} experts: {table.full_acc:.2f}")
        for col in ("subset", "experts kept", "test acc", "vs all"):
            view.add_column(col, justify="left" if col == "subset" else "right")
        for r in table.rows:
            delta = r.test_acc - table.full_acc
            view.add_row(r.name, ",".join(map(str, r.experts)) or "-", f"{r.test_acc:.2f}",
                         f"[{'red' if delta < 0 else 'green'}]{delta:+.2f}[/]")
        console.print(view)
    err_console.print(f"wrote {files[0]} and {files[1].name}", highlight=False, markup=False)
    log_to_mlflow(tracker, cell.mlflow_run_id, files)


@app.command("attention")
def attention(
    backbone: Backbone = None,
    task: Task = None,
    method: ExpertMethod = None,
    sweep: SweepName = None,
    source: From = None,
    images: Annotated[int, typer.Option(help="test images (grid rows), one per class in turn")] = 4,
    weights: Weights = None,
    data_root: DataRoot = None,
    out: Out = None,
    device: Device = "auto",
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """A PNG grid of attention maps per expert (paper figures 4 and 7).

    Rows: test images. Columns: the image, Single-1..n (one expert kept), Increment-n (all: the trained model).

    Each map: the last block's [CLS] -> patch attention, mean over heads (the head reads only that [CLS]).

    Examples:

      alorectl analyze attention --backbone demo --task digits --images 4
    """
    if images < 1:
        raise ConfigError(f"--images must be >= 1, got {images}")
    cell = locate(workdir, db_flag, backbone, task, method, sweep, source, weights, data_root,
                  experts_for="attention maps per expert")
    tracker = mlflow_runs(workdir, tracking_uri, [cell])
    model, split, _ = rebuild(cell, device)
    grid = analysis.expert_attention(model, split, images)
    path = output_folder(out, workdir, cell) / f"attention-{cell.adapter.method}.png"
    width, height = analysis.draw_grid(grid, path)
    console.print(f"attention grid ({len(grid.labels)} images x {len(grid.columns)} columns: "
                  f"{', '.join(grid.columns)}; {width}x{height} px) written to {path}", highlight=False,
                  markup=False)
    log_to_mlflow(tracker, cell.mlflow_run_id, [path])


@app.command("tsne")
def tsne(
    backbone: Backbone = None,
    task: Task = None,
    methods: Annotated[str, typer.Option(help="comma-separated methods, one panel each")] = "alore,lora",
    sweep: SweepName = None,
    source: Annotated[list[Path] | None, typer.Option(
        "--from", help="run/cell/export folders, one per panel (repeatable; replaces --methods)")] = None,
    samples: Annotated[int, typer.Option(help="at most this many test images, spread over the split")] = 2000,
    weights: Weights = None,
    data_root: DataRoot = None,
    out: Out = None,
    device: Device = "auto",
    batch_size: BatchSize = 256,
    as_json: Annotated[bool, typer.Option("--json", help="print the scores as JSON")] = False,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """Side-by-side t-SNE of each method's [CLS] embedding, with silhouette and k-NN accuracy (figure 5).

    The embedding: [CLS] after the last block and the final norm, as the classification head receives it.

    Examples:

      alorectl analyze tsne --backbone demo --task digits --methods alore,lora
    """
    if samples < 3:
        raise ConfigError(f"--samples must be >= 3, got {samples}")
    if source:
        cells = [locate(workdir, db_flag, backbone, task, None, sweep, s, weights, data_root) for s in source]
    else:
        names = split_csv(methods)
        if not names:
            raise ConfigError("--methods is empty; pass e.g. --methods alore,lora")
        cells = [locate(workdir, db_flag, backbone, task, m, sweep, None, weights, data_root) for m in names]
    if len({(c.adapter.backbone, c.task) for c in cells}) > 1:
        raise ConfigError("the t-SNE panels must share one backbone and task; got "
                          + ", ".join(f"{c.adapter.backbone}/{c.task}" for c in cells))
    tracker = mlflow_runs(workdir, tracking_uri, cells)
    embeddings = []
    for cell in cells:
        model, split, autocast = rebuild(cell, device, limit=samples)
        features, labels = analysis.head_inputs(model, split, batch_size, autocast)
        emb = analysis.score(analysis.Embedding(cell.adapter.method, features, labels))
        embeddings.append(analysis.project(emb))
    first = cells[0]
    folder = output_folder(out, workdir, first)
    stem = "tsne-" + "_".join(e.method for e in embeddings)
    title = f"{first.adapter.backbone}/{first.task}: [CLS] embeddings of {len(embeddings[0].labels)} test images"
    files = [analysis.draw_panels(embeddings, folder / f"{stem}.png", title),
             write_text(folder / f"{stem}.json", json.dumps([e.summary() for e in embeddings], indent=2) + "\n")]
    if as_json:
        sys.stdout.write(json.dumps([e.summary() for e in embeddings], indent=2) + "\n")
    else:
        view = Table(title=f"Cluster quality of [CLS] embeddings, {title.split(':')[0]} "
                           f"({len(embeddings[0].labels)} test images)")
        for col in ("method", "silhouette (cosine)", f"{analysis.tsne.KNN_K}-NN acc (%)", "dim"):
            view.add_column(col, justify="left" if col == "method" else "right")
        for e in embeddings:
            view.add_row(e.method, f"{e.silhouette:.4f}", f"{e.knn_acc:.2f}", str(e.features.shape[1]))
        console.print(view)
    err_console.print(f"wrote {files[0]}", highlight=False, markup=False)
    for cell in cells:
        log_to_mlflow(tracker, cell.mlflow_run_id, files)


@app.command("search")
def search(
    backbone: Annotated[str, typer.Option(help="backbone of the cell")],
    task: Annotated[str, typer.Option(help="task of the cell")],
    method: Annotated[str, typer.Option(help="method of the cell")],
    sweep: Annotated[str | None, typer.Option("--sweep", help="the sweep whose search (default: the newest)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="output folder (default <workdir>/analysis/<backbone>/<task>/search-<method>)")] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
) -> None:
    """Parameter importance and parallel coordinates of a cell's search, from its Optuna study (PNG files).

    Examples:

      alorectl analyze search --backbone demo --task digits --method alore

      alorectl analyze search --backbone vit_b --task cifar --method lora --sweep vtab --out pictures/
    """
    import optuna

    from alorectl.results import pictures
    from alorectl.sweep import studies

    for kind, value in (("backbone", backbone), ("task", task), ("method", method)):
        check_name(kind, value)
    if sweep is not None:
        check_name("sweep", sweep)
    storage = studies.open_journal(workdir, create=False)
    if storage is None:
        raise AloreError(f"no Optuna studies in {workdir} ({studies.journal_path(workdir)} does not exist); "
                         "run a sweep first or pass --workdir")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    cells = [n for n in names if n.split("/", 1)[-1] == f"{backbone}/{task}/{method}"]
    wanted = [n for n in cells if sweep is None or n.split("/", 1)[0] == sweep]
    if not wanted:
        raise UnknownChoiceError("search" + (f" of sweep {sweep}" if sweep else ""), f"{backbone}/{task}/{method}",
                                 sorted({n.split("/", 1)[-1] for n in names if sweep is None or
                                         n.split("/", 1)[0] == sweep}) or ["(none)"])
    study = optuna.load_study(study_name=wanted[-1], storage=storage)  # the newest: studies are kept in order
    done = pictures.complete(study)
    if done < pictures.MIN_TRIALS:
        raise AloreError(f"the search of {wanted[-1]} has {done} complete trial(s); its pictures need at least "
                         f"{pictures.MIN_TRIALS}")
    folder = out if out is not None else inside(workdir, "analysis", backbone, task, f"search-{method}")
    files = pictures.draw(study, folder)
    for path in files:
        console.print(f"wrote {path}", highlight=False, markup=False)
