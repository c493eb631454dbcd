"""``alorectl params``: trainable parameters per method, as the paper counts them (appendix C)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

import alore
from alore.errors import AloreError
from .app import console, print_json, split_csv


def count_rows(backbone: str, methods: list[str], num_classes: int) -> list[dict]:
    """One row per method; a method that does not apply to this architecture (VPT on Swin or
    ConvNeXt, ALoRE_attn on ConvNeXt) is an honest n/a row with the reason, not a failure."""
    alore.backbones.resolve(backbone)
    rows = []
    for name in methods:
        spec = alore.methods.get_method(name)
        model = alore.create_backbone(backbone, num_classes, device="meta")  # no weights, no memory
        row = {"method": name, "trainable_params": None, "supported": True, "reason": None,
               "mergeable": spec.mergeable, "formula": spec.paper_params, "description": spec.description}
        try:
            alore.apply(model, name)
        except AloreError as err:  # the method's own "does not apply to this backbone" line
            row.update(supported=False, reason=str(err))
        else:
            row["trainable_params"] = alore.count_trainable(model)
        rows.append(row)
    return rows


def params(
    backbone: Annotated[str, typer.Option(help="vit_b, vit_l, vit_h, swin_b, convnext_b, ... or a timm name")] = "vit_b",
    method: Annotated[list[str] | None, typer.Option("--method", "-m", help="repeat or comma-separate; default all")] = None,
    classes: Annotated[int, typer.Option(help="classes of the head (not counted)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON list")] = False,
) -> None:
    """Print trainable parameters and mergeability per method; builds the architecture only.

    Examples:

      alorectl params --backbone vit_b

      alorectl params --backbone swin_b -m alore -m lora --json
    """
    names = [n for item in (method or []) for n in split_csv(item)] or list(alore.METHODS)
    for name in names:
        alore.methods.get_method(name)  # fail on a bad name before building anything
    rows = count_rows(backbone, names, classes)
    if as_json:
        keys = ("method", "trainable_params", "supported", "reason", "mergeable", "formula")
        print_json([{k: r[k] for k in keys} for r in rows])
        return
    table = Table(title=f"Trainable parameters on {backbone} (head excluded, paper appendix C)")
    for col in ("method", "params", "Params(M)", "mergeable", "table 10 formula"):
        table.add_column(col, justify="right" if col.startswith(("params", "Params")) else "left")
    for r in rows:
        n = r["trainable_params"]
        table.add_row(r["method"], "n/a" if n is None else f"{n:,}", "n/a" if n is None else f"{n / 1e6:.2f}",
                      "-" if n is None else "yes" if r["mergeable"] else "no", r["formula"])
    console.print(table)
    for r in rows:  # the reasons in full, below the table: they name the backbones the method fits
        if not r["supported"]:
            console.print(f"n/a {r['method']}: {r['reason']}", highlight=False, markup=False, soft_wrap=True)
