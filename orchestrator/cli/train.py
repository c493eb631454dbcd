"""``alorectl train``: one run with the paper's recipe, a progress bar, and its files in ``--out``.

``--out`` receives ``metrics.json``, ``adapter.safetensors`` and, for mergeable
methods, ``merged.safetensors`` (checked against the adapted model on real
images before it is written), plus ``checkpoint.pt`` after every epoch: running
the same command again continues an interrupted run.

Weights are never silently random: without ``--weights`` a real backbone gets
timm's pretrained weights for its tag (the local hub cache, or a download),
fetched once into ``$ALORE_WEIGHTS_DIR`` before anything runs, or the command
refuses in one line; the small test backbones start random and say so.
``--weights random`` is random on purpose. ``metrics.json`` records which.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from alore.callbacks import Callbacks
from alore.errors import ConfigError

from .app import Lazy, console, err_console, print_json

# torch and timm: imported when a run starts, not when the root app lists its commands
backbones, training = Lazy("alore.backbones"), Lazy("alore.train")
artifacts, splits = Lazy("alore.artifacts"), Lazy("alore.data.splits")


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


def check_out(out: Path) -> None:
    """``--out`` must be (or become) a folder we can write: checked before a minute of training is spent."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder (it is created if missing)")
    parent = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor or "."))
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: cannot write in {parent}")


def resolve_weights(backbone: str, weights: str | None) -> tuple[str | None, str, str]:
    """(what ``fit`` loads, what metrics.json records, a note for the user) for ``--weights``."""
    if weights == backbones.RANDOM:
        return backbones.RANDOM, backbones.RANDOM, f"{backbone}: random initialisation (--weights random)"
    if weights is None and backbones.is_small_test(backbone):
        return None, backbones.RANDOM, (f"{backbone}: random initialisation (small test backbone); "
                                        "pass --weights FILE for pretrained weights")
    if weights is None or weights in backbones.HUB:
        # Fetched before anything runs: no weights anywhere is one line, not a random backbone.
        path = backbones.fetch_pretrained(backbone, backbones.weights_cache_dir(), flag="--weights ")
        tag = backbones.pretrained_tag(backbone)
        return str(path), f"timm:{tag}", f"{backbone}: timm's pretrained {tag} ({path})"
    if not Path(weights).is_file():
        raise backbones.WeightsError(f"weights file not found: {weights} (pass a .safetensors/.pth/.npz file, "
                                     f"'timm' or '{backbones.RANDOM}')")
    return weights, weights, ""


def train(
    backbone: Annotated[str, typer.Option(help="vit_b, vit_l, vit_h, swin_b, convnext_b, demo, or a timm name")] = "vit_b",
    weights: Annotated[str | None, typer.Option(
        help="local .safetensors/.pth/.npz, 'timm' (the default for real backbones: timm's pretrained tag from the "
             "hub cache or a download, kept in $ALORE_WEIGHTS_DIR), or 'random' on purpose")] = None,
    task: Annotated[str, typer.Option(help="task folder under --data-root, e.g. cifar")] = "cifar",
    data_root: Annotated[Path, typer.Option(help="VTAB-1k or FGVC root folder", envvar="ALORE_DATA_ROOT")] = Path("data/vtab-1k"),
    suite: Annotated[str, typer.Option(help="vtab or fgvc (on-disk layout)")] = "vtab",
    method: Annotated[str, typer.Option(help="alore, lora, ssf, repadapter, vpt, adapter, ...")] = "alore",
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="method option key=value, repeatable")] = None,
    lr: Annotated[float, typer.Option(help="peak learning rate; grid {0.05, 0.01, 0.005, 0.001}")] = 1e-3,
    wd: Annotated[float, typer.Option(help="AdamW weight decay; grid {0.05, 0.01, 0.005, 0.001, 0}")] = 1e-3,
    dropout: Annotated[float | None, typer.Option(help="adapter dropout; grid {0.1, 0}")] = None,
    epochs: Annotated[int, typer.Option(help="training epochs (paper: 100)")] = 100,
    warmup_epochs: Annotated[int | None, typer.Option(
        help="linear warm-up epochs (default: 10% of --epochs, the paper's 10 of 100)")] = None,
    batch_size: Annotated[int, typer.Option(help="batch size (paper: 32)")] = 32,
    protocol: Annotated[str, typer.Option(help="search: train800 -> val200; final: train800val200 -> test")] = "final",
    seed: Annotated[int, typer.Option(help="random seed")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    out: Annotated[Path, typer.Option(help="output folder (resumes from its checkpoint)")] = Path("runs/train"),
    as_json: Annotated[bool, typer.Option("--json", help="print metrics as JSON, no progress bar")] = False,
) -> None:
    """Train one backbone x task x method run and write its metrics and weights.

    Examples:

      alorectl data demo --out demo && alorectl train --backbone demo --weights demo/demo.safetensors --task digits --data-root demo/vtab-1k --out runs/digits

      alorectl train --backbone vit_b --task cifar --data-root data/vtab-1k --method alore -o rank=8 --out runs/cifar
    """
    # Everything a user can get wrong is checked before the first file is written.
    if warmup_epochs is not None and epochs >= 1 and not 0 <= warmup_epochs <= epochs:
        raise ConfigError(f"--warmup-epochs must be in [0, --epochs={epochs}], got {warmup_epochs}")
    config = training.TrainConfig(backbone=backbone, weights=weights, task=task, suite=suite, data_root=str(data_root),
                                  method=method, method_options=parse_options(option), protocol=protocol, lr=lr,
                                  weight_decay=wd, dropout=dropout, epochs=epochs, warmup_epochs=warmup_epochs,
                                  batch_size=batch_size, seed=seed, device=device)
    backbones.resolve(backbone)
    config.validate()
    check_out(out)
    splits.task_info(suite, task, splits.require_root(data_root))
    training.read_checkpoint(out)  # a corrupt or foreign checkpoint.pt: refused before any download
    config.weights, weights_used, note = resolve_weights(backbone, weights)
    training.check_resume(config, out)
    if note:
        err_console.print(note, highlight=False, markup=False)

    keep: dict[str, Any] = {}
    if as_json:
        metrics = training.fit(config, checkpoint_dir=out, resume_from=out, keep=keep)
    else:
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[stats]}")]
        with Progress(*columns, console=console) as progress:
            metrics = training.fit(config, ProgressCallbacks(progress, epochs), checkpoint_dir=out, resume_from=out,
                                   keep=keep)
    metrics["weights"] = weights_used
    if weights_used.startswith("timm:"):
        metrics["weights_file"] = config.weights
    artifacts.write_run_files(out, metrics, keep["model"], keep["data"])
    if as_json:
        print_json({k: v for k, v in metrics.items() if k != "history"})
    else:
        score = "val_acc" if protocol == "search" else "test_acc"
        console.print(f"[bold]{method}[/] on {task}: {score} {metrics[score]:.2f}%  "
                      f"({metrics['trainable_params']:,} trainable params)  -> {out}", highlight=False)
