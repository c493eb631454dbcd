"""``alorectl sweep run PRESET`` / ``sweep status NAME`` / ``sweep resume NAME`` (``sweep PRESET`` = ``sweep run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alorectl import db
from alore.errors import ConfigError, UnknownChoiceError
from alorectl.sweep.timing import PREPARING, timing
from alorectl.tracking.links import VIEW_ID, experiment_url

from .app import App, Lazy, OneLineGroup, console, print_json, resume_hint, split_csv
from alorectl.results.render import print_board
from alorectl.results.store import open_results
from .options import DEFAULT_WORKDIR, Address, DbUrl, TrackingUri, Workdir


class ShortcutGroup(OneLineGroup):
    """``alorectl sweep vtab ...`` is ``alorectl sweep run vtab ...``: any first word that is not a
    subcommand is a preset."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


# Imported when a sweep is planned or run (torch, Ray, MLflow): `sweep status` and `--help` need none of them.
planning, presets = Lazy("alorectl.sweep.plan"), Lazy("alorectl.sweep.preset")
driver, tracking = Lazy("alorectl.sweep.driver"), Lazy("alorectl.tracking.client")

UI_URL = "http://127.0.0.1:5000"  # where `alorectl ui` serves by default

app = App(cls=ShortcutGroup, help="Sweeps: run a preset, watch it, resume it. `alorectl sweep PRESET` is short for "
                                  "`alorectl sweep run PRESET`, e.g. `alorectl sweep demo`.")


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
                raise ConfigError(f"--weights {bad[0]!r}: use BACKBONE=FILE (or BACKBONE=random) for each "
                                  "backbone, e.g. vit_b=vit_b.npz")
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
    return presets.replace(p, **changes)


@app.command("run")
def sweep_run(
    preset: Annotated[str, typer.Argument(help="a preset (vtab, fgvc, demo) or a .yaml path")],
    backbones: Annotated[str | None, typer.Option(help="comma-separated, e.g. vit_b,vit_l,vit_h")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated (default: the preset's)")] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names")] = None,
    trials: Annotated[int | None, typer.Option(help="search trials per cell (the whole grid when it is smaller)")] = None,
    search: Annotated[str | None, typer.Option(help="optuna or grid")] = None,
    scheduler: Annotated[str | None, typer.Option(help="fifo or asha")] = None,
    epochs: Annotated[int | None, typer.Option(help="training epochs (paper: 100)")] = None,
    gpus_per_trial: Annotated[float | None, typer.Option(help="GPUs per trial; fractions pack trials on a GPU")] = None,
    cpus_per_trial: Annotated[float | None, typer.Option(help="CPUs per trial")] = None,
    max_concurrent_trials: Annotated[int | None, typer.Option(
        help="trials in flight at once for the whole sweep (default: as many as the cluster fits)")] = None,
    data_root: Annotated[Path | None, typer.Option(help="data root (VTAB-1k or FGVC layout)", envvar="ALORE_DATA_ROOT")] = None,
    weights: Annotated[str | None, typer.Option(
        help="BACKBONE=FILE|random,... (or one FILE for one backbone); default: timm's pretrained checkpoint")] = None,
    seeds: Annotated[str | None, typer.Option(help="seeds of the final runs, e.g. 42,43,44")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the plan and its estimated makespan; start nothing")] = False,
    gpus: Annotated[int | None, typer.Option(help="with --dry-run: trial slots to estimate for (default 1)")] = None,
    address: Address = None,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    sweep_name: Annotated[str | None, typer.Option("--name", help="sweep name (default: the preset's)")] = None,
    warm_start_from: Annotated[list[str] | None, typer.Option(
        "--warm-start-from", help="an earlier sweep (repeatable): each cell's search starts from the best "
                                  "configurations of its task and method there, on any backbone")] = None,
    force_new: Annotated[bool, typer.Option(
        "--force-new", help="replace a sweep recorded under this name (its rows and Tune folder) and start afresh")] = False,
) -> None:
    """Run a sweep of ALoRE and baselines: search on val200, final runs on test, MLflow + leaderboard.

    Examples:

      alorectl sweep demo   (short for: alorectl sweep run demo)

      alorectl sweep vtab --backbones vit_b,vit_l --dry-run --gpus 8
    """
    if max_concurrent_trials is not None and max_concurrent_trials < 1:
        raise ConfigError(f"--max-concurrent-trials must be >= 1, got {max_concurrent_trials}")
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus must be >= 1, got {gpus}")
    if gpus is not None and not dry_run:
        raise ConfigError("--gpus only goes with --dry-run (a real sweep uses what the Ray cluster has)")
    p = apply_flags(presets.load(preset), backbones=backbones, methods=methods, tasks=tasks, trials=trials,
                    search=search, scheduler=scheduler, gpus_per_trial=gpus_per_trial, cpus_per_trial=cpus_per_trial,
                    data_root=data_root, weights=weights, seeds=seeds, epochs=epochs)
    warm = check_warm_start(workdir, warm_start_from or [])
    settings = driver.Settings.embedded(sweep_name or p.name, workdir, tracking_uri, db_flag, address,
                                        max_concurrent_trials, warm_start_from=warm)
    if dry_run:
        return show_plan(p, settings, gpus or 1)
    execute(p, settings, resume=False, force_new=force_new)


@app.command("resume")
def sweep_resume(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    address: Address = None,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    max_concurrent_trials: Annotated[int | None, typer.Option(help="trials in flight at once")] = None,
) -> None:
    """Continue a sweep: restore its Tune experiment, finish what is left, log what MLflow is missing.

    Examples:

      alorectl sweep resume demo
    """
    with open_results(workdir, db_flag) as engine:
        stored = db.sweep_config(engine, name)
    uri = stored.get("tracking_uri")
    if tracking_uri is None and uri and "***" in uri:
        raise ConfigError(f"sweep {name!r} logged to {uri}, whose password is not stored; pass --tracking-uri "
                          "(or MLFLOW_TRACKING_URI) with the credentials")
    p = presets.from_stored(stored, f"stored sweep {name!r}")
    warm = tuple(stored.get("warm_start_from") or ())
    execute(p, driver.Settings.embedded(name, workdir, tracking_uri or uri, db_flag, address, max_concurrent_trials,
                                        warm_start_from=warm), resume=True)


@app.command("status")
def sweep_status(
    name: Annotated[str, typer.Argument(help="the sweep's name")],
    workdir: Workdir = DEFAULT_WORKDIR,
    db_flag: DbUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Where a sweep stands: cells, trials running/done/left, slot occupancy, ETA.

    Examples:

      alorectl sweep status demo

      alorectl sweep status demo --json
    """
    with open_results(workdir, db_flag) as engine:
        status = db.sweep_status(engine, name)
        config = db.sweep_config(engine, name)
        trials = db.sweep_trials(engine, name)
    t = timing(trials, int(config.get("slots") or 1), int(config.get("total_trials") or 0))
    preparing = config.get(PREPARING)
    planned = config.get("planned") or {}
    if as_json:
        print_json({**status.to_dict(), "timing": t.to_dict(), "preparing": preparing, "planned": planned})
        return
    counts = ", ".join(f"{k} {v}" for k, v in status.counts.items())
    console.print(f"[bold]{status.name}[/] ({status.status}): cells {counts}", highlight=False)
    if preparing:
        total = config.get("total_trials")
        console.print(f"{preparing}" + (f"; {total} trials planned" if total else ""), highlight=False)
    else:
        occ = f"{t.occupancy:.0%}" if t.occupancy is not None else "-"
        # An ETA only from trials that finished: before that there is nothing to estimate from.
        eta = ("0s" if not t.left else _duration(t.eta_s) if t.ended and t.eta_s is not None
               else "- (after the first trials finish)")
        console.print(f"trials: {t.running} running, {t.ended} done, {t.left} left · {t.slots} slots, occupancy "
                      f"{occ} · ETA {eta}", highlight=False)
    table = Table()
    for col in ("backbone", "task", "method", "status", "trials", "best val", "test", "chosen config"):
        table.add_column(col)
    for c in status.cells:
        test = "-"
        if c.test_acc_mean is not None:  # a spread only over several seeds: one seed has none
            spread = f" ± {c.test_acc_std:.2f}" if len(c.seeds or ()) > 1 and c.test_acc_std is not None else ""
            test = f"{c.test_acc_mean:.2f}{spread}"
        n = planned.get(f"{c.backbone}__{c.task}__{c.method}", c.n_trials)
        table.add_row(c.backbone, c.task, c.method, c.status, f"{c.trials_done}/{n}",
                      f"{c.best_val_acc:.2f}" if c.best_val_acc is not None else "-", test,
                      ", ".join(f"{k}={v}" for k, v in (c.best_config or {}).items()))
    if status.cells:
        console.print(table)
        console.print("best val: per cell, the best val200 accuracy of its search (the selection metric)",
                      highlight=False)


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def check_warm_start(workdir: Path, sources: list[str]) -> tuple[str, ...]:
    """``--warm-start-from`` names sweeps whose studies are in the work folder's journal (read only)."""
    from alorectl.security import check_name
    from alorectl.sweep import studies

    for name in sources:
        check_name("sweep", name)
    if not sources:
        return ()
    storage = studies.open_journal(workdir, create=False)
    if storage is None:
        raise ConfigError(f"--warm-start-from {sources[0]}: no Optuna studies in {workdir} "
                          f"({studies.journal_path(workdir)} does not exist)")
    known = studies.sweeps_in(storage)
    for name in sources:
        if name not in known:
            raise UnknownChoiceError("sweep to warm-start from", name, known or ["(none)"])
    return tuple(dict.fromkeys(sources))


def show_plan(p: presets.Preset, settings: driver.Settings, gpus: int) -> None:
    """``--dry-run``: cells, trials, total and the makespan estimate; nothing is started or written."""
    plan = driver.make_plan(p, settings, fetch=False)
    table = Table(title=f"sweep {settings.name}: plan (nothing started)")
    for col in ("backbone", "task", "method", "search", "final", "trials", "cost/trial"):
        table.add_column(col, justify="left" if col in ("backbone", "task", "method", "search") else "right")
    for cp in plan.cells:
        search = f"{cp.n_search} " + ("(whole grid)" if cp.exhaustive else f"of {cp.grid_size} (optuna)")
        table.add_row(cp.cell.backbone, cp.cell.task, cp.cell.method, search, str(len(cp.seeds)),
                      str(cp.n_trials), f"{cp.cost:.2f}")
    console.print(table)
    span = planning.estimate_makespan(plan, gpus)
    work = sum(cp.n_trials * cp.cost for cp in plan.cells)
    console.print(f"{len(plan.cells)} cells, {plan.total_trials} trials, {work:.0f} ViT-B trial-equivalents of work; "
                  f"on {gpus} trial slot(s) the estimated makespan is {span:.0f} ViT-B trials "
                  f"(cells in flight at once, in the plan's order; occupancy {work / (gpus * span):.0%})", highlight=False)


def execute(p: presets.Preset, settings: driver.Settings, resume: bool, force_new: bool = False) -> None:
    console.print(f"[bold]sweep {settings.name}[/]: {', '.join(p.backbones)} × {len(p.tasks)} tasks × "
                  f"{', '.join(p.methods)}; workdir {escape(str(settings.workdir))}", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[note]}"), console=console) as progress:
        bar = progress.add_task("starting", total=None, note="")
        running: set[str] = set()

        def step(message: str) -> None:
            progress.update(bar, note=message)
            progress.console.print(f"  {escape(message)}", highlight=False)  # a line per step: the log shows it

        def planned(plan: planning.SweepPlan) -> None:
            progress.update(bar, description="trials", total=plan.total_trials)

        def trial_start(spec: planning.TrialSpec) -> None:
            running.add(f"{spec.cell.key}/{spec.key}")
            progress.update(bar, note=f"{len(running)} running")

        def trial_done(o: Any) -> None:
            cell = o.spec.cell
            running.discard(f"{cell.key}/{o.spec.key}")
            progress.update(bar, advance=1, note=f"{len(running)} running · last {o.spec.cell.method}/"
                                                 f"{o.spec.cell.task} {o.spec.key}: {o.status}")

        def cell_done(cell: Any, r: Any) -> None:
            progress.console.print(
                f"  [green]done[/] {cell.backbone}/{cell.task}/{cell.method}: val {r.val_acc or 0:.2f}  "
                f"test {r.test_acc_mean:.2f}" + (f" ± {r.test_acc_std:.2f}" if len(r.seeds) > 1 else "")
                + f"  ({r.trainable_params:,} params)",
                highlight=False)

        def warning(message: str) -> None:
            progress.console.print(f"  [yellow]warning:[/] {escape(message)}", highlight=False)

        links: dict[str, str] = {}
        hooks = driver.Hooks(on_step=step, on_plan=planned, on_trial_start=trial_start, on_trial_done=trial_done,
                      on_cell_done=cell_done, on_warning=warning, on_links=links.update)
        with resume_hint(settings.name):
            driver.run_sweep(p, settings, hooks, resume=resume, force_new=force_new)
    engine = db.connect(settings.db_url)
    fake = bool(db.sweep_config(engine, settings.name).get("simulated"))  # alorectl bench scale's sweeps
    for backbone in p.backbones:
        print_board(console, engine, backbone, p.suite, simulated=fake)
    console.print(f"leaderboard: alorectl leaderboard --backbone {p.backbones[0]} --suite {p.suite} "
                  f"--workdir {escape(str(settings.workdir))}", highlight=False)
    server = settings.tracking_uri.startswith(("http://", "https://"))
    base = tracking.bare_uri(settings.tracking_uri) if server else UI_URL
    ui = f"MLflow UI:   {base}" if server else f"MLflow UI:   alorectl ui --workdir {settings.workdir}   then open:"
    console.print(escape(ui), highlight=False)
    for name, experiment_id in sorted(links.items(), key=lambda kv: "leaderboard" not in kv[0]):
        console.print(f"  {name}: {experiment_url(base, experiment_id, view=VIEW_ID)}", highlight=False,
                      soft_wrap=True)

