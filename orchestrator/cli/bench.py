"""``alorectl bench``: throughput as ratios measured in one run (never asserted in tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alore.errors import ConfigError, DataError, UnknownChoiceError

from .app import App, Lazy, console, print_json, split_csv

benchmark, devices = Lazy("alore.benchmark"), Lazy("alore.device")  # torch: imported when a benchmark runs

app = App(help="Benchmarks: tables of ratios measured in one run.")


@app.command("inference")
def inference(
    backbone: Annotated[str, typer.Option(help="backbone to measure")] = "vit_b",
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "alore,lora,ssf,repadapter,vpt,adapter",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 32,
    steps: Annotated[int, typer.Option(help="timed forward passes per model")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
) -> None:
    """Images/s of the bare backbone, each adapted model unmerged, and each merged one (random weights: speed only).

    Examples:

      alorectl bench inference --backbone vit_b --methods alore,lora --device cuda
    """
    benchmark.check_args(backbone, split_csv(methods), batch_size, steps)
    dev = devices.pick_device(device)
    if not as_json:
        console.print(f"[dim]{backbone} on {dev}, batch {batch_size}, {steps} steps per model[/]", highlight=False)
    rows = benchmark.inference_rows(backbone, split_csv(methods), batch_size, steps, dev,
                          on_row=None if as_json else lambda r: console.print(
                              f"  {r['model']:<28} {r['images_per_s']:9.1f} img/s  x{r['ratio']:.3f}", highlight=False))
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"Inference throughput on {backbone} ({dev}), ratio to the bare backbone")
    for col in ("model", "img/s", "ratio", "trainable params"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(r["model"], f"{r['images_per_s']:.1f}", f"{r['ratio']:.3f}", f"{r['params']:,}")
    console.print(table)


@app.command("train")
def train(
    backbone: Annotated[str, typer.Option(help="backbone to measure")] = "vit_b",
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "alore,lora,ssf,repadapter,vpt,adapter,full",
    batch_size: Annotated[int, typer.Option(help="images per step (paper: 32)")] = 32,
    steps: Annotated[int, typer.Option(help="timed training steps per method")] = 10,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
) -> None:
    """Training step time, peak memory (CUDA) and data-loading share per method, as ratios to LoRA.

    Examples:

      alorectl bench train --backbone vit_b --methods alore,lora,vpt --device cuda
    """
    from alore.benchmark import train_rows

    names = split_csv(methods)
    benchmark.check_args(backbone, names, batch_size, steps)
    dev = devices.pick_device(device)
    rows = train_rows(backbone, names, batch_size, steps, dev, on_row=None if as_json else lambda r: console.print(
        f"  {r['method']:<12} {r['step_ms']:8.1f} ms/step  {r['images_per_s']:8.1f} img/s", highlight=False))
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"Training step on {backbone} ({dev}), batch {batch_size}; ratios to {rows[0]['baseline']}")
    for col in ("method", "img/s", "ms/step", "step ratio", "peak MiB", "memory ratio", "loading share", "params"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['images_per_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['step_ratio']:.3f}",
                      f"{r['peak_mib']:.0f}" if r["peak_mib"] else "n/a",
                      f"{r['memory_ratio']:.3f}" if r["memory_ratio"] else "n/a",
                      f"{100 * r['loading_share']:.2f}%", f"{r['params']:,}")
    console.print(table)


@app.command("sweep")
def sweep(
    tasks: Annotated[str, typer.Option(help="demo tasks, comma-separated")] = "digits,digits_rot",
    methods: Annotated[str, typer.Option(help="methods, comma-separated")] = "alore,lora,ssf",
    trials: Annotated[int, typer.Option(help="search trials per cell (one final run follows each search)")] = 2,
    epochs: Annotated[int, typer.Option(help="epochs per trial")] = 3,
    data: Annotated[Path | None, typer.Option(help="a folder from `alorectl data demo` (default: made afresh)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
) -> None:
    """One multi-cell demo sweep on 1 and on 2 trial slots: makespan, slot occupancy, speedup, overhead.

    Examples:

      alorectl bench sweep --tasks digits --methods alore,lora --epochs 2
    """
    from alore.data import DEMO_TASKS
    from alore.methods import get_method
    from alorectl.bench.sweep import bench_sweep

    task_list, method_list = split_csv(tasks), split_csv(methods)
    for t in task_list:
        if t not in DEMO_TASKS:
            raise UnknownChoiceError("demo task", t, DEMO_TASKS)
    for m in method_list:
        get_method(m)
    if trials < 1 or epochs < 1:
        raise ConfigError(f"--trials and --epochs must be >= 1, got {trials} and {epochs}")
    if data is not None and not (data / "vtab-1k").is_dir():
        raise DataError(f"--data {data}: no vtab-1k folder in it (make one with: alorectl data demo --out DIR)")
    rows = bench_sweep(task_list, method_list, trials, epochs, data)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"Sweep fan-out: {len(task_list)} tasks x {len(method_list)} methods, {trials} search + 1 "
                        "final per cell (demo backbone, local Ray)")
    for col in ("slots", "trials", "makespan (s)", "occupancy", "speedup", "mean trial wall (s)", "overhead"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["slots"]), str(r["trials"]), f"{r['makespan_s']:.1f}", f"{r['occupancy']:.2f}",
                      f"{r['speedup']:.2f}x", f"{r['mean_trial_wall_s']:.1f}", f"{100 * r['overhead_share']:.1f}%")
    console.print(table)


@app.command("scale")
def scale(
    preset: Annotated[str, typer.Argument(help="a preset (vtab, fgvc, demo) or a .yaml path")],
    slots: Annotated[int, typer.Option(help="GPU trial slots of the simulated cluster, all nodes together")],
    backbones: Annotated[str | None, typer.Option(help="comma-separated, e.g. vit_b,vit_l,vit_h")] = None,
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names (default: the preset's)")] = None,
    methods: Annotated[str | None, typer.Option(help="comma-separated (default: the preset's)")] = None,
    trials: Annotated[int | None, typer.Option(help="search trials per cell (default: the preset's)")] = None,
    nodes: Annotated[int, typer.Option(help="simulated Ray nodes the slots are spread over")] = 1,
    trial_seconds: Annotated[float, typer.Option(help="seconds one simulated ViT-B trial takes (others: by cost)")] = 2.0,
    epochs: Annotated[int | None, typer.Option(help="epochs per trial (default: the preset's)")] = None,
    workdir: Annotated[Path | None, typer.Option(help="a new or empty folder (default: a new one under /tmp)")] = None,
    kill_driver_at: Annotated[float | None, typer.Option(
        help="SIGKILL the driver when this fraction of trials is complete, then resume (e.g. 0.5)")] = None,
    kill_node_at: Annotated[float | None, typer.Option(
        help="SIGKILL one simulated node when this fraction of trials is complete (e.g. 0.5)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="last line of stdout: one JSON object")] = False,
    command_times: Annotated[bool, typer.Option(hidden=True, help="also time `sweep status` and `leaderboard` "
                                                "as whole commands (interpreter start and imports)")] = True,
) -> None:
    """The real sweep (plan, searcher, Tune, database, MLflow, leaderboard, resume) on a simulated cluster of
    local Ray nodes; only the trial body is simulated. Prints makespan vs the plan's estimate, occupancy, lag.

    Examples:

      alorectl bench scale vtab --backbones vit_b --slots 16 --nodes 2 --trial-seconds 1 --epochs 10

      alorectl bench scale vtab --backbones vit_b,vit_l,vit_h --slots 64 --nodes 8 --trial-seconds 2 --epochs 10 --json
    """
    import tempfile

    from alorectl.bench.scale import Options, run_bench
    from alorectl.sweep import preset as presets

    from .sweep import apply_flags

    if slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {slots}")
    if not 1 <= nodes <= slots:
        raise ConfigError(f"--nodes must be between 1 and --slots ({slots}), got {nodes}")
    if not trial_seconds > 0:
        raise ConfigError(f"--trial-seconds must be > 0, got {trial_seconds}")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    for flag, value in (("--kill-driver-at", kill_driver_at), ("--kill-node-at", kill_node_at)):
        if value is not None and not 0 < value < 1:
            raise ConfigError(f"{flag} must be a fraction between 0 and 1 (exclusive), got {value}")
    if kill_driver_at is not None and kill_node_at is not None:
        raise ConfigError("--kill-driver-at and --kill-node-at: choose one fault per run")
    if kill_node_at is not None and nodes < 2:
        raise ConfigError(f"--kill-node-at needs --nodes of 2 or more (the head stays), got {nodes}")
    if workdir is not None and workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"--workdir {workdir} is not an empty folder; name a new or empty one")
    p = apply_flags(presets.load(preset), backbones=backbones, methods=methods, tasks=tasks, trials=trials,
                    epochs=epochs)
    work = workdir or Path(tempfile.mkdtemp(prefix="alore-scale-"))
    # Steps and progress: on stderr with --json (stdout ends with the one JSON line).
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if as_json else (
        lambda m: console.print(m, style="dim", highlight=False, markup=False))
    r = run_bench(p, Options(slots=slots, nodes=nodes, trial_seconds=trial_seconds, epochs=epochs,
                             kill_driver_at=kill_driver_at, kill_node_at=kill_node_at, name=f"scale-{p.name}",
                             command_times=command_times),
                  work, on_step=say)
    if as_json:
        print(json.dumps(r))  # one line: the last line of stdout
        return
    console.print(summary_line(r), highlight=False, markup=False, soft_wrap=True)


def summary_line(r: dict) -> str:
    """The benchmark's one summary (the JSON carries every number)."""
    def f(key: str, fmt: str = ".2f") -> str:
        return "-" if r.get(key) is None else format(r[key], fmt)

    ok = all(r[k] == 0 for k in ("db_missing", "db_extra", "db_duplicates", "db_not_ended", "mlflow_missing",
                                 "mlflow_duplicates")) and r["cells_on_leaderboard"] == r["cells"]
    text = (f"SIMULATED sweep: {r['trials']}/{r['planned_trials']} trials of {r['cells']} cells on {r['slots']} slots "
            f"({r['nodes']} nodes, {r['trial_seconds']:g} s per ViT-B trial, {r['epochs']} epochs): makespan "
            f"{f('makespan_s', '.1f')} s vs the plan's {f('ideal_makespan_s', '.1f')} s (x{f('makespan_ratio')}; the "
            f"driver done at {f('sweep_done_s', '.1f')} s), occupancy {f('occupancy')} (trials training at once: median {r.get('concurrent_trials_median', '-')}, "
            f"peak {r.get('concurrent_trials_max', '-')}, in {r.get('trial_processes', '-')} worker processes), "
            f"{f('results_per_s', '.1f')} results/s, lag median {f('lag_s_median')} s "
            f"max {f('lag_s_max')} s, driver {f('driver_cpu_s', '.0f')} CPU-s ({f('driver_cpu_ms_per_trial', '.0f')} ms "
            f"per trial, {f('driver_cpu_share')} of one core) peak {f('driver_peak_rss_mb', '.0f')} MB, "
            f"experiment state {f('experiment_state_mb', '.1f')} MB, status {f('status_s')} s, leaderboard "
            f"{f('leaderboard_s')} s")
    if "restore_s" in r:
        text += f"; {r['killed']} killed: restore {f('restore_s', '.1f')} s, lost {f('lost_trial_s', '.1f')} trial-s"
    text += ("; every trial once in the database and MLflow, every cell on the leaderboard" if ok else
             f"; CHECK FAILED: {json.dumps({k: r[k] for k in r if k.startswith(('db_', 'mlflow_', 'cells_'))})}")
    return text + (f". Machine: {r.get('machine_cpus')} cores, load average {r.get('load_avg_1m')} at the end (the "
                   f"simulated nodes share them with the driver). Merged weights: {r['merged_weights']}. "
                   f"Workdir: {r['workdir']}")
