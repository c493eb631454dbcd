"""``alorectl bench``: throughput as ratios measured in one run (never asserted in tests)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from alore.benchmark import inference_rows, pick_device

from ..app import App, console, print_json, split_csv

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
    """Images/s of the bare backbone, each adapted model unmerged, and each merged one."""
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
