"""``alorectl sweep PRESET`` / ``sweep status NAME`` / ``sweep resume NAME``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import db
from alore.errors import ConfigError, UnknownChoiceError
from orchestrator import preset as presets
from orchestrator.sweep import Hooks, Settings, cells, run_sweep

from ..app import console, fail, print_json, split_csv
from .common import DEFAULT_WORKDIR, Address, DbUrl, TrackingUri, Workdir, db_url


def apply_flags(p: presets.Preset, **flags: Any) -> presets.Preset:
    """CLI flags override the preset; the result is validated again."""
    changes: dict[str, Any] = {}
    for key in ("backbones", "methods", "tasks"):
        if flags.get(key):
            changes[key] = split_csv(flags[key])
    if flags.get("seeds"):
        try:
            changes["seeds"] = [int(s) for s in split_csv(flags["seeds"])]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, got {flags['seeds']!r}") from None
    if flags.get("weights"):
        pairs = split_csv(flags["weights"])
        backbones = changes.get("backbones", p.backbones)
        if len(pairs) == 1 and "=" not in pairs[0] and len(backbones) == 1:
            changes["weights"] = {backbones[0]: pairs[0]}
        else:
            bad = [x for x in pairs if "=" not in x]
            if bad:
                raise ConfigError(f"--weights {bad[0]!r}: use BACKBONE=FILE for each backbone, e.g. vit_b=vit_b.npz")
            changes["weights"] = {**p.weights, **dict(x.split("=", 1) for x in pairs)}
    for key, flag in (("trials", "trials"), ("algorithm", "search"), ("scheduler", "scheduler"),
                      ("cpus_per_trial", "cpus_per_trial"), ("gpus_per_trial", "gpus_per_trial"),
                      ("data_root", "data_root"), ("epochs", "epochs")):
        if flags.get(flag) is not None:
            changes[key] = str(flags[flag]) if key == "data_root" else flags[flag]
    if "algorithm" in changes and changes["algorithm"] not in presets.SEARCH_ALGORITHMS:
        raise UnknownChoiceError("search algorithm", changes["algorithm"], presets.SEARCH_ALGORITHMS)
    if "scheduler" in changes and changes["scheduler"] not in presets.SCHEDULERS:
        raise UnknownChoiceError("scheduler", changes["scheduler"], presets.SCHEDULERS)
    if "epochs" in changes:
        changes["warmup_epochs"] = min(p.warmup_epochs, changes["epochs"])
    p = dataclasses.replace(p, **changes)
    presets.validate(p)
    return p


def trials_per_cell(p: presets.Preset, method: str) -> int:
    from orchestrator.sweep import cell_space

    if p.algorithm == "grid":
        shared, options = cell_space(p, method)
        search = math.prod(len(v) for v in {**shared, **options}.values())
    else:
        search = p.trials
    return search + len(p.seeds)


def sweep(
    target: Annotated[str, typer.Argument(help="a preset (vtab, fgvc, demo, or a .yaml path), or 'status'/'resume'")],
    name: Annotated[str | None, typer.Argument(help="with status/resume: the sweep's name")] = None,
    backbones: Annotated[str | None, typer.Option(help="comma-separated, e.g. vit_b,vit_l,vit_h")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated (default: the preset's)")] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names")] = None,
    trials: Annotated[int | None, typer.Option(help="Optuna trials per cell")] = None,
    search: Annotated[str | None, typer.Option(help="optuna or grid")] = None,
    scheduler: Annotated[str | None, typer.Option(help="fifo or asha")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs (paper: 100)")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial; fractions pack trials on a GPU")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial")] = None,
    data_root: Annotated[Path | None, typer.Option(help="data root (VTAB-1k or FGVC layout)", envvar="ALORE_DATA_ROOT")] = None,
    weights: Annotated[str | None, typer.Option(help="BACKBONE=FILE,... (or one FILE for one backbone)")] = None,
    seeds: Annotated[str | None, typer.Option(help="seeds of the final runs, e.g. 42,43,44")] = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    sweep_name: Annotated[str | None, typer.Option("--name", help="sweep name (default: the preset's)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="status: print JSON")] = False,
) -> None:
    """Run a sweep of ALoRE and baselines: Optuna search on val200, final runs on test, MLflow + leaderboard."""
    if target == "status":
        return show_status(_need_name(name, "status"), workdir, db_flag, as_json)
    if target == "resume":
        engine = db.connect(db_url(workdir, db_flag))
        stored = _stored_config(engine, _need_name(name, "resume"))
        uri = stored.get("tracking_uri")
        uri = tracking_uri or (uri if uri and "***" not in uri else None)  # a masked URI must come from the flag
        fields = {f.name for f in dataclasses.fields(presets.Preset)}
        p = presets.Preset(**{k: v for k, v in stored.items() if k in fields})
        return execute(p, Settings.embedded(name, workdir, uri, db_flag, address))
    if name is not None:
        fail(f"unexpected argument {name!r}; usage: alorectl sweep PRESET [options] | sweep status NAME | sweep resume NAME")
    p = apply_flags(presets.load(target), backbones=backbones, methods=methods, tasks=tasks, trials=trials,
                    search=search, scheduler=scheduler, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                    data_root=data_root, weights=weights, seeds=seeds, epochs=epochs)
    execute(p, Settings.embedded(sweep_name or p.name, workdir, tracking_uri, db_flag, address))


def _need_name(name: str | None, action: str) -> str:
    if not name:
        fail(f"sweep {action} needs the sweep's name: alorectl sweep {action} NAME")
    return name  # type: ignore[return-value]


def _stored_config(engine: Any, name: str) -> dict[str, Any]:
    from sqlalchemy import select

    from db.models import Sweep
    from db.session import read_scope

    with read_scope(engine) as conn:
        config = conn.execute(select(Sweep.config).where(Sweep.name == name)).scalar_one_or_none()
    if config is None:
        choices = db.sweep_names(engine)
        fail(f"unknown sweep {name!r}; valid choices: {', '.join(choices) or '(none yet)'}")
    return config


def execute(p: presets.Preset, settings: Settings) -> None:
    plan = cells(p)
    total = sum(trials_per_cell(p, c.method) for c in plan)
    console.print(f"[bold]sweep {settings.name}[/]: {len(plan)} cells ({', '.join(p.backbones)} x "
                  f"{len(p.tasks)} tasks x {', '.join(p.methods)}), {total} trials; workdir {settings.workdir}",
                  highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=console) as progress:
        bar = progress.add_task("trials", total=total, note="")

        best: dict[Any, float] = {}

        def cell_start(cell: Any, phase: str) -> None:
            progress.update(bar, note=f"{cell.backbone}/{cell.task}/{cell.method}: {phase}")

        def trial_done(cell: Any, trial: Any, ok: bool) -> None:
            val = (trial.last_result or {}).get("val_acc")
            if val is not None and val > best.get(cell, -1.0):
                best[cell] = val
            note = f"{cell.backbone}/{cell.task}/{cell.method}"
            if cell in best:
                note += f": best val so far {best[cell]:.2f}"
            progress.update(bar, advance=1, note=note)

        def cell_done(cell: Any, r: dict[str, Any]) -> None:
            progress.console.print(
                f"  [green]done[/] {cell.backbone}/{cell.task}/{cell.method}: val {r['val_acc']:.2f}  "
                f"test {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f}  ({r['trainable_params']:,} params)",
                highlight=False)

        def warning(message: str) -> None:
            progress.console.print(f"  [yellow]warning:[/] {message}", highlight=False)

        run_sweep(p, settings, Hooks(on_cell_start=cell_start, on_trial_done=trial_done, on_cell_done=cell_done,
                                     on_warning=warning))
    console.print(f"leaderboard: alorectl leaderboard --backbone {p.backbones[0]} --suite {p.suite} "
                  f"--workdir {settings.workdir}")
    console.print(f"MLflow UI:   alorectl ui --workdir {settings.workdir}   (or: mlflow ui --backend-store-uri "
                  f"{settings.tracking_uri})")


def show_status(name: str, workdir: Path, url: str | None, as_json: bool) -> None:
    engine = db.connect(db_url(workdir, url))
    try:
        status = db.sweep_status(engine, name)
    except db.SweepNotFoundError:
        fail(f"unknown sweep {name!r}; valid choices: {', '.join(db.sweep_names(engine)) or '(none yet)'}")
    if as_json:
        print_json(status.to_dict())
        return
    counts = ", ".join(f"{k} {v}" for k, v in status.counts.items())
    console.print(f"[bold]{status.name}[/] ({status.status}): {counts}", highlight=False)
    table = Table()
    for col in ("backbone", "task", "method", "status", "trials", "best val", "test", "chosen config"):
        table.add_column(col)
    for c in status.cells:
        test = f"{c.test_acc_mean:.2f} ± {c.test_acc_std or 0:.2f}" if c.test_acc_mean is not None else "-"
        table.add_row(c.backbone, c.task, c.method, c.status, f"{c.trials_done}/{c.n_trials}",
                      f"{c.best_val_acc:.2f}" if c.best_val_acc is not None else "-", test,
                      ", ".join(f"{k}={v}" for k, v in (c.best_config or {}).items()))
    console.print(table)
    best = status.best
    if best is not None:
        console.print(f"best so far: {best.backbone}/{best.task}/{best.method}", highlight=False)
