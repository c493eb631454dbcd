"""``alorectl params``: trainable parameters per method, as the paper counts them (appendix C)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

import alore
from alore.methods import get_method

from ..app import console, print_json, split_csv


def count_rows(backbone: str, methods: list[str], num_classes: int) -> list[dict]:
    rows = []
    for name in methods:
        spec = get_method(name)
        model = alore.create_backbone(backbone, num_classes, device="meta")  # no weights, no memory
        alore.apply(model, name)
        rows.append({"method": name, "trainable_params": alore.count_trainable(model),
                     "mergeable": spec.mergeable, "formula": spec.paper_params, "description": spec.description})
    return rows


def params(
    backbone: Annotated[str, typer.Option(help="vit_b, vit_l, vit_h, swin_b, convnext_b, ... or a timm name")] = "vit_b",
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="repeat or comma-separate; default all")] = None,
    classes: Annotated[int, typer.Option(help="classes of the head (not counted)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """Print trainable parameters and mergeability per method; builds the architecture only."""
    names = [n for item in (method or []) for n in split_csv(item)] or list(alore.METHODS)
    for name in names:
        get_method(name)  # fail on a bad name before building anything
    rows = count_rows(backbone, names, classes)
    if as_json:
        print_json([{k: r[k] for k in ("method", "trainable_params", "mergeable", "formula")} for r in rows])
        return
    table = Table(title=f"Trainable parameters on {backbone} (head excluded, paper appendix C)")
    for col in ("method", "params", "Params(M)", "mergeable", "table 10 formula"):
        table.add_column(col, justify="right" if col.startswith(("params", "Params")) else "left")
    for r in rows:
        table.add_row(r["method"], f"{r['trainable_params']:,}", f"{r['trainable_params'] / 1e6:.2f}",
                      "yes" if r["mergeable"] else "no", r["formula"])
    console.print(table)
