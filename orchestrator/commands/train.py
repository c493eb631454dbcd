"""``alorectl train``: one run with the paper's recipe, a progress bar, and its files in ``--out``.

``--out`` receives ``metrics.json``, ``adapter.safetensors`` and, for mergeable
methods, ``merged.safetensors`` (checked against the adapted model on real
images before it is written), plus ``checkpoint.pt`` after every epoch: running
the same command again continues an interrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import alore
from alore.artifacts import write_run_files
from alore.data import task_info
from alore.data.splits import require_root
from alore.errors import ConfigError
from alore.methods import get_method
from alore.train import Callbacks, TrainConfig, fit

from ..app import console, print_json


class ProgressCallbacks(Callbacks):
    """A rich progress bar: decoding once, then one bar per run with loss, accuracy and images/s."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress, self.epochs = progress, epochs
        self.decode = progress.add_task("decode", total=None, stats="")
        self.train = progress.add_task("train", total=None, stats="", visible=False)

    def on_data(self, done: int, total: int) -> None:
        self.progress.update(self.decode, completed=done, total=total)

    def on_step(self, epoch: int, step: int, steps: int, stats: dict[str, float]) -> None:
        self.progress.update(self.train, visible=True, total=self.epochs * steps, completed=epoch * steps + step,
                             description=f"epoch {epoch + 1}/{self.epochs}",
                             stats=f"loss {stats['loss']:.3f}  acc {stats['acc']:.1f}%  {stats['images_per_s']:.0f} img/s")

    def on_epoch(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        score = [f"{k} {metrics[k]:.2f}" for k in ("val_acc", "test_acc") if k in metrics]
        if score:
            self.progress.console.print(f"  epoch {metrics['epoch']}: {'  '.join(score)}", highlight=False)


def parse_options(values: list[str] | None) -> dict[str, Any]:
    """``--option rank=8 --option locations=before_attn,after_ffn`` → typed values."""
    options: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise ConfigError(f"--option {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.split(",") if "," in raw else raw
        options[key.strip()] = [value] if key.strip() == "locations" and isinstance(value, str) else value
    return options


def train(
    backbone: Annotated[str, typer.Option(help="vit_b, vit_l, vit_h, swin_b, convnext_b, demo, or a timm name")] = "vit_b",
    weights: Annotated[str | None, typer.Option(help="local .safetensors/.pth/.npz, or 'timm' to download")] = None,
    task: Annotated[str, typer.Option(help="task folder under --data-root, e.g. cifar")] = "cifar",
    data_root: Annotated[Path, typer.Option(help="VTAB-1k or FGVC root folder", envvar="ALORE_DATA_ROOT")] = Path("data/vtab-1k"),
    suite: Annotated[str, typer.Option(help="vtab or fgvc (on-disk layout)")] = "vtab",
    method: Annotated[str, typer.Option(help="alore, lora, ssf, repadapter, vpt, adapter, ...")] = "alore",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="method option key=value, repeatable")] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate; grid {0.05, 0.01, 0.005, 0.001}")] = 1e-3,
    wd: Annotated[float, typer.Option(help="AdamW weight decay; grid {0.05, 0.01, 0.005, 0.001, 0}")] = 1e-3,
    dropout: Annotated[float | None, typer.Option(help="adapter dropout; grid {0.1, 0}")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs (paper: 100)")] = 100,
    warmup_epochs: Annotated[int, typer.Option(help="linear warm-up epochs (paper: 10)")] = 10,
    batch_size: Annotated[int, typer.Option(help="batch size (paper: 32)")] = 32,
    protocol: Annotated[str, typer.Option(help="search: train800 -> val200; final: train800val200 -> test")] = "final",
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    out: Annotated[Path, typer.Option(help="output folder (resumes from its checkpoint)")] = Path("runs/train"),
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON, no progress bar")] = False,
) -> None:
    """Train one backbone x task x method run and write its metrics and weights."""
    config = TrainConfig(backbone=backbone, weights=weights, task=task, suite=suite, data_root=str(data_root),
                         method=method, method_options=parse_options(option), protocol=protocol, lr=lr,
                         weight_decay=wd, dropout=dropout, epochs=epochs, warmup_epochs=warmup_epochs,
                         batch_size=batch_size, seed=seed, device=device)
    # Everything a user can get wrong is checked before the first file is written.
    config.validate()
    task_info(suite, task, require_root(data_root))
    alore.backbones.resolve(backbone)
    get_method(method).config_cls.from_overrides(config.method_options)

    keep: dict[str, Any] = {}
    if as_json:
        metrics = fit(config, checkpoint_dir=out, resume_from=out, keep=keep)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[stats]}")]
        with Progress(*columns, console=console) as progress:
            metrics = fit(config, ProgressCallbacks(progress, epochs), checkpoint_dir=out, resume_from=out, keep=keep)
    write_run_files(out, metrics, keep["model"], keep["data"])
    if as_json:
        print_json({k: v for k, v in metrics.items() if k != "history"})
    else:
        score = "val_acc" if protocol == "search" else "test_acc"
        console.print(f"[bold]{method}[/] on {task}: {score} {metrics[score]:.2f}%  "
                      f"({metrics['trainable_params']:,} trainable params)  -> {out}", highlight=False)
