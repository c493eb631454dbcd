"""``alorectl check-merge``: fold each mergeable method on a real architecture and compare outputs."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

import alore

from .app import console, fail, print_json, split_csv


def check_merge(
    backbone: Annotated[str, typer.Option(help="backbone architecture (random weights)")] = "vit_b",
    methods: Annotated[str | None, typer.Option(help="comma-separated; default every mergeable method")] = None,
    tolerance: Annotated[float, typer.Option(help="largest relative error accepted (float32)")] = 1e-4,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Merge each method (weights moved away from the identity) and check plain timm gives the same outputs.

    Examples:

      alorectl check-merge --backbone vit_test

      alorectl check-merge --backbone vit_b --methods alore,lora
    """
    import torch  # here, not at import: the root app lists this command without loading torch

    from alore.api import merge_error
    from alore.backbones import data_config
    from alore.methods import get_method

    names = split_csv(methods) or alore.mergeable_methods()
    alore.backbones.resolve(backbone)
    for name in names:
        get_method(name)
    if not tolerance > 0:
        fail(f"--tolerance must be > 0, got {tolerance}")
    torch.manual_seed(0)
    rows = []
    for name in names:
        model = alore.apply(alore.create_backbone(backbone, 10), name)
        with torch.no_grad():  # the identity init would make any merge look right
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(0.02 * torch.randn_like(p))
        size = data_config(model)["image_size"]
        x = torch.randn(2, 3, size, size)
        plain = alore.merge(model)
        err = merge_error(model, plain, x)
        same_keys = set(plain.state_dict()) == set(alore.create_backbone(backbone, 10, device="meta").state_dict())
        rows.append({"method": name, "relative_error": err, "same_keys": same_keys,
                     "ok": err <= tolerance and same_keys})
        if not as_json:
            console.print(f"  {name:<12} relative error {err:.2e}  keys {'same' if same_keys else 'DIFFER'}",
                          highlight=False)
    if as_json:
        print_json(rows)
    else:
        table = Table(title=f"Merged vs adapted outputs on {backbone} (float32)")
        for col in ("method", "relative error", "plain timm keys", "ok"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["method"], f"{r['relative_error']:.2e}", "same" if r["same_keys"] else "differ",
                          "yes" if r["ok"] else "NO")
        console.print(table)
    bad = [r["method"] for r in rows if not r["ok"]]
    if bad:
        fail(f"merge check failed for {', '.join(bad)} (tolerance {tolerance})")
