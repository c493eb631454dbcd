"""``alorectl leaderboard``, ``alorectl export`` and ``alorectl ui``: reading a sweep's results."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

import db
from alore.backbones import resolve
from alore.errors import AloreError, UnknownChoiceError
from db.models import Result
from orchestrator.leaderboard_view import build

from ..app import console, fail
from .common import DEFAULT_WORKDIR, DbUrl, TrackingUri, Workdir, db_url, tracking_uri

FORMATS = ("table", "markdown", "csv", "json")


def leaderboard(
    backbone: Annotated[str, typer.Option(help="backbone whose leaderboard to show")] = "vit_b",
    suite: Annotated[str, typer.Option(help="vtab or fgvc")] = "vtab",
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json")] = "table",
    plot: Annotated[Path | None, typer.Option(help="draw mean accuracy vs trainable parameters (paper fig. 1) to PNG")] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri_flag: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """The paper's table layout: a row per method, a column per task, group means, Params(M), best marked."""
    if fmt not in FORMATS:
        raise UnknownChoiceError("format", fmt, FORMATS)
    board = build(db.connect(db_url(workdir, db_flag)), backbone, suite)
    if not board.rows:
        fail(f"no results for backbone {backbone!r} ({suite}) in {db.mask_url(db_url(workdir, db_flag))}; "
             "run a sweep first: alorectl sweep demo")
    if fmt == "markdown":
        sys.stdout.write(db.to_markdown(board) + "\n")
    elif fmt == "csv":
        sys.stdout.write(db.to_csv(board))
    elif fmt == "json":
        sys.stdout.write(db.to_json(board) + "\n")
    else:
        header, rows = db.to_rows(board, mark="[bold green]{}[/]")
        table = Table(title=f"{backbone} on {suite}: top-1 test accuracy (%), best per column in green")
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    if plot is not None:
        draw(board, plot, backbone)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    console.print(f"plot written to {path}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pick_result(bind: Any, backbone: str, task: str, method: str) -> Any:
    """The newest result of (backbone, task, method); with ``best``, the method with the best val accuracy
    (model selection never looks at test)."""
    query = select(Result).where(Result.backbone == backbone, Result.task == task)
    if method != "best":
        query = query.where(Result.method == method)
    with Session(bind) as session:
        rows = list(session.scalars(query.order_by(Result.updated_at.desc())))
        if not rows:
            have = sorted({f"{b}/{t}/{m}" for b, t, m in session.execute(
                select(Result.backbone, Result.task, Result.method)).all()})
            raise UnknownChoiceError("result (backbone/task/method)", f"{backbone}/{task}/{method}",
                                     have or ["(no results yet: run a sweep)"])
        session.expunge_all()
    if method == "best":
        newest: dict[str, Any] = {}
        for r in rows:
            newest.setdefault(r.method, r)
        return max(newest.values(), key=lambda r: r.val_acc if r.val_acc is not None else -1)
    return rows[0]


def safe_child(out: Path, name: str) -> Path:
    """A file inside ``out``; a name from the command line cannot escape it."""
    target = (out / name).resolve()
    if out.resolve() not in target.parents:
        raise AloreError(f"refusing to write outside --out: {name!r}")
    return target


def export(
    backbone: Annotated[str, typer.Option(help="backbone of the result")] = "vit_b",
    task: Annotated[str, typer.Option(help="task of the result")] = "cifar",
    method: Annotated[str, typer.Option(help="a method, or 'best' (chosen by val accuracy)")] = "alore",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("export"),
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri_flag: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """Write model.safetensors (merged into plain timm), adapter.safetensors and card.json."""
    row = pick_result(db.connect(db_url(workdir, db_flag)), backbone, task, method)
    source = Path(row.artifact_uri or "")
    if not (source / "adapter.safetensors").is_file():
        raise AloreError(f"the files of {backbone}/{task}/{row.method} are missing from {source}")
    spec = resolve(backbone)
    metrics = json.loads((source / "metrics.json").read_text()) if (source / "metrics.json").is_file() else {}
    classes = int(metrics.get("num_classes") or row.config.get("num_classes") or 0)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    merged = source / "merged.safetensors"
    if merged.is_file():
        shutil.copy2(merged, safe_child(out, "model.safetensors"))
        files["model.safetensors"] = _sha256(out / "model.safetensors")
    shutil.copy2(source / "adapter.safetensors", safe_child(out, "adapter.safetensors"))
    files["adapter.safetensors"] = _sha256(out / "adapter.safetensors")
    kwargs = dict(spec.kwargs)
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    load = (f"timm.create_model({spec.timm_name!r}, pretrained=True, num_classes={classes}, "
            f"pretrained_cfg_overlay=dict(file='model.safetensors', num_classes={classes})"
            + (f", {args}" if args else "") + ")")
    card = {
        "backbone": backbone, "timm_name": spec.timm_name, "timm_kwargs": kwargs, "num_classes": classes,
        "task": task, "suite": row.suite, "method": row.method, "config": row.config, "seeds": row.seeds,
        "epochs": row.epochs, "val_acc": row.val_acc, "test_acc": row.test_acc_mean, "test_acc_std": row.test_acc_std,
        "trainable_params": row.trainable_params, "mlflow_run_id": row.mlflow_run_id,
        "mlflow_tracking_uri": db.urls.mask_text(tracking_uri(workdir, tracking_uri_flag)), "sha256": files,
        "merged": "model.safetensors" in files,
        "load": load if "model.safetensors" in files else
        f"alore.apply(alore.create_backbone({backbone!r}, {classes}, weights=BACKBONE_WEIGHTS), {row.method!r}, "
        f"**card['config']['method_options']); alore.api.load_adapter(model, 'adapter.safetensors')",
        "note": "num_classes must be in pretrained_cfg_overlay too, or timm drops the trained head",
    }
    tmp = safe_child(out, "card.json.tmp")
    tmp.write_text(json.dumps(card, indent=2, default=str))
    tmp.replace(out / "card.json")
    console.print(f"exported {backbone}/{task}/{row.method} (test {row.test_acc_mean:.2f}%) to {out}", highlight=False)
    if card["merged"]:
        console.print(f"load it with plain timm:\n  {load}", highlight=False)


def ui(
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri_flag: TrackingUri = None,
    host: Annotated[str, typer.Option(help="bind address; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 5000,
) -> None:
    """Start the MLflow UI on the sweep's store (127.0.0.1 unless told otherwise)."""
    uri = tracking_uri(workdir, tracking_uri_flag)
    console.print(f"MLflow UI on http://{host}:{port}  (store {db.mask_url(uri) if '://' in uri else uri})")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    raise typer.Exit(subprocess.call(cmd))
