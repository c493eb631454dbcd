"""``alorectl bench``: throughput as ratios measured in one run (never asserted in tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alore.benchmark import check_args, inference_rows
from alore.device import pick_device
from alore.errors import ConfigError, DataError, UnknownChoiceError

from .app import App, console, print_json, split_csv

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
    check_args(backbone, split_csv(methods), batch_size, steps)
    dev = pick_device(device)
    if not as_json:
        console.print(f"[dim]{backbone} on {dev}, batch {batch_size}, {steps} steps per model[/]", highlight=False)
    rows = inference_rows(backbone, split_csv(methods), batch_size, steps, dev,
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
    check_args(backbone, names, batch_size, steps)
    dev = pick_device(device)
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
