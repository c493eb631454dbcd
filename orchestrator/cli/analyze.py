"""``alorectl analyze``: the paper's three analyses of a finished cell (table 22, figures 4/7 and 5).

Each command finds the cell's final adapter (the newest result of backbone/task/
method in the leaderboard database, or ``--from DIR``: a sweep cell folder, an
``alorectl export`` folder or an ``alorectl train`` run folder), rebuilds the
adapted model with the backbone weights and data the run used, computes with
:mod:`alore.analysis`, prints or draws, writes its files under ``--out`` and
logs them to the cell's MLflow run (``analysis/``) when the cell has one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from alore.errors import AloreError, ConfigError, UnknownChoiceError
from alore.files import write_text

from .app import App, Lazy, console, err_console, split_csv
from alorectl.security import check_name, inside
from .options import DEFAULT_WORKDIR, DbUrl, TrackingUri, Workdir
from .options import tracking_uri as resolve_tracking_uri

# torch: imported when a command runs
analysis, provenance = Lazy("alore.analysis"), Lazy("alorectl.results.provenance")

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


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def say(message: str) -> None:
    err_console.print(message, highlight=False, markup=False)


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
    cell = provenance.locate(workdir, db_flag, backbone, task, method, sweep, source, weights, data_root,
                  experts_for="the expert analysis")
    tracker = provenance.mlflow_runs(resolve_tracking_uri(workdir, tracking_uri), [cell], warn)
    model, split, autocast = provenance.rebuild(cell, device)
    table = analysis.expert_table(model, split, batch_size, autocast)
    folder = provenance.output_folder(out, workdir, cell)
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
    provenance.log_to_mlflow(tracker, cell.mlflow_run_id, files, warn, say)


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
    cell = provenance.locate(workdir, db_flag, backbone, task, method, sweep, source, weights, data_root,
                  experts_for="attention maps per expert")
    tracker = provenance.mlflow_runs(resolve_tracking_uri(workdir, tracking_uri), [cell], warn)
    model, split, _ = provenance.rebuild(cell, device)
    grid = analysis.expert_attention(model, split, images)
    path = provenance.output_folder(out, workdir, cell) / f"attention-{cell.adapter.method}.png"
    width, height = analysis.draw_grid(grid, path)
    console.print(f"attention grid ({len(grid.labels)} images x {len(grid.columns)} columns: "
                  f"{', '.join(grid.columns)}; {width}x{height} px) written to {path}", highlight=False,
                  markup=False)
    provenance.log_to_mlflow(tracker, cell.mlflow_run_id, [path], warn, say)


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
        cells = [provenance.locate(workdir, db_flag, backbone, task, None, sweep, s, weights, data_root)
                 for s in source]
    else:
        names = split_csv(methods)
        if not names:
            raise ConfigError("--methods is empty; pass e.g. --methods alore,lora")
        cells = [provenance.locate(workdir, db_flag, backbone, task, m, sweep, None, weights, data_root)
                 for m in names]
    if len({(c.adapter.backbone, c.task) for c in cells}) > 1:
        raise ConfigError("the t-SNE panels must share one backbone and task; got "
                          + ", ".join(f"{c.adapter.backbone}/{c.task}" for c in cells))
    tracker = provenance.mlflow_runs(resolve_tracking_uri(workdir, tracking_uri), cells, warn)
    embeddings = []
    for cell in cells:
        model, split, autocast = provenance.rebuild(cell, device, limit=samples)
        features, labels = analysis.head_inputs(model, split, batch_size, autocast)
        emb = analysis.score(analysis.Embedding(cell.adapter.method, features, labels))
        embeddings.append(analysis.project(emb))
    first = cells[0]
    folder = provenance.output_folder(out, workdir, first)
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
        provenance.log_to_mlflow(tracker, cell.mlflow_run_id, files, warn, say)


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
