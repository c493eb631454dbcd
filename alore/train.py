"""One run, end to end: the paper's recipe (section 4.1, appendix B.2, table 8).

:func:`fit` reads in execution order, like nanoGPT's ``train.py``: device and
autocast, seeds, model, data, optimizer, the warm-up + cosine learning-rate
function, resume, the loop, evaluation, checkpoint. A Ray trial calls this same
function; it knows nothing of Ray, MLflow or a database, and reports through
:class:`Callbacks`.

Protocols (VPT): ``search`` trains on train800 and scores val200, ``final``
trains on train800val200 and scores test. Model selection only ever sees the
``search`` score.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import typing
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .api import apply, count_trainable
from .checks import describe, fits
from .backbones import HUB, RANDOM, create_backbone, data_config, is_small_test, pretrained_tag
from .data import PROTOCOLS, SUITES, load_task, task_info
from .device import autocast_for, pick_device
from .callbacks import Callbacks  # noqa: F401  (the hooks fit() calls; re-exported)
from .errors import ConfigError, UnknownChoiceError, WeightsError
from .files import atomic_path
from .methods import get_method

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = {"config", "trainable", "optimizer", "epoch", "step", "history", "rng_cpu", "rng_data"}


@dataclasses.dataclass
class TrainConfig:
    """Everything one run needs; the defaults are the paper's (table 8)."""

    backbone: str = "vit_b"
    weights: str | None = None   # a file, "timm", or "random"; None: random, allowed for small test backbones only
    task: str = "cifar"
    suite: str = "vtab"
    data_root: str = "data/vtab-1k"
    method: str = "alore"
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    protocol: str = "final"
    lr: float = 1e-3             # grid {0.05, 0.01, 0.005, 0.001}
    weight_decay: float = 1e-3   # grid {0.05, 0.01, 0.005, 0.001, 0}
    dropout: float | None = None  # grid {0.1, 0}; None keeps the method's default
    epochs: int = 100
    warmup_epochs: int | None = None  # None: 10% of the epochs (the paper's 10 of 100)
    batch_size: int = 32
    min_lr: float = 1e-8
    seed: int = 42
    device: str = "auto"
    eval_every: int = 0          # epochs between evaluations; 0: every epoch for search, the last for final
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.warmup_epochs is None:
            self.warmup_epochs = default_warmup(self.epochs)

    def validate(self) -> None:
        if self.suite not in SUITES:
            raise UnknownChoiceError("suite", self.suite, SUITES)
        if self.protocol not in PROTOCOLS:
            raise UnknownChoiceError("protocol", self.protocol, PROTOCOLS)
        check_method_options(self.method, self.method_options)
        pick_device(self.device)
        checks = [("lr", self.lr > 0, "must be positive"),
                  ("min_lr", 0 <= self.min_lr <= self.lr, f"must be in [0, lr={self.lr}]"),("weight_decay", self.weight_decay >= 0, "must be >= 0"),
                  ("epochs", self.epochs >= 1, "must be >= 1"),
                  ("warmup_epochs", 0 <= self.warmup_epochs <= self.epochs, f"must be in [0, epochs={self.epochs}]"),
                  ("batch_size", self.batch_size >= 1, "must be >= 1"),
                  ("eval_every", self.eval_every >= 0, "must be >= 0"),
                  ("dropout", self.dropout is None or 0 <= self.dropout < 1, "must be in [0, 1)")]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"{name} {rule}, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def weights_used(self) -> str:
        """What the backbone starts from, as recorded in the metrics: a file, ``timm:<tag>`` or ``random``."""
        if self.weights is None or self.weights == RANDOM:
            return RANDOM
        if self.weights in HUB:
            return f"timm:{pretrained_tag(self.backbone)}"
        return str(self.weights)


def default_warmup(epochs: int) -> int:
    """10% of the epochs, rounded half up: the paper warms up 10 of 100 epochs (section 4.1)."""
    return (epochs + 5) // 10 if isinstance(epochs, int) and epochs > 0 else 0


def check_method_options(method: str, options: dict[str, Any]) -> Any:
    """The method's config from ``options``, each value checked against its field's type first
    (``rank="abc"`` is one ConfigError line, not a TypeError inside the config's checks)."""
    cls = get_method(method).config_cls
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        if key in hints and not fits(value, hints[key]):
            raise ConfigError(f"option {key}={value!r} for method {method!r} must be {describe(hints[key])}")
    return cls.from_overrides(options)


def read_checkpoint(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The resume state in ``folder`` (None when there is none); a file that is not one of ours is refused
    in one line: it is read with ``weights_only=True`` and must hold every key :func:`fit` writes."""
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        return None
    advice = "remove it or use another output folder"
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol chatter would add lines to a one-line error
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unreadable, truncated, or a pickle with code in it: never unpickled
        why = "it holds Python objects, not only tensors" if "weights_only" in str(err) else type(err).__name__
        raise WeightsError(f"{path} is not a valid alore checkpoint ({why}); {advice}") from None
    missing = sorted(CHECKPOINT_KEYS - set(state)) if isinstance(state, dict) else ["(not a dict)"]
    if missing or not isinstance(state.get("config"), dict):
        raise WeightsError(f"{path} is not a valid alore checkpoint (missing {', '.join(missing) or 'config'}); "
                           f"{advice}")
    return state


def check_resume(config: TrainConfig, folder: str | os.PathLike) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` if it belongs to ``config``; another configuration's is refused."""
    state = read_checkpoint(folder)
    if state is not None and state["config"] != config.to_dict():
        raise ConfigError(f"checkpoint in {folder} belongs to another configuration; "
                          "use a new output folder or the same options")
    return state


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``, per iteration (paper 4.1)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """Backbone with its weights, the method applied with the run's dropout."""
    model = create_backbone(config.backbone, num_classes, config.weights)
    options = dict(config.method_options)
    fields = {f.name for f in dataclasses.fields(get_method(config.method).config_cls)}
    if config.dropout is not None and "dropout" in fields:
        options.setdefault("dropout", config.dropout)
    return apply(model, config.method, **options)


@torch.inference_mode()
def evaluate(model: nn.Module, split: Any, batch_size: int, autocast: Any) -> float:
    """Top-1 accuracy in percent over the whole split (large splits arrive in chunks)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in split.batches(batch_size):
        with autocast():
            logits = model(x)
        correct += int((logits.argmax(-1) == y).sum())
        total += int(y.numel())
    model.train(was_training)
    return 100.0 * correct / max(1, total)


def _save_atomic(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:  # a crash mid-write never leaves a half checkpoint
        torch.save(obj, tmp)


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(config: TrainConfig, callbacks: Callbacks | None = None, *, checkpoint_dir: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | None = None, keep: dict | None = None) -> dict[str, Any]:
    """Train one (backbone, task, method) run and return its metrics.

    A checkpoint (trainable parameters, optimizer, step, epoch, RNG states) is
    written to ``checkpoint_dir`` after every epoch; with ``resume_from`` the run
    continues from such a checkpoint and ends with the metrics it would have had
    uninterrupted (CPU, deterministic). ``keep``, if given, receives the trained
    ``model`` and the decoded ``data`` (the CLI writes and checks weights with them).
    """
    config.validate()
    if config.weights is None and not is_small_test(config.backbone):
        # Never a silently random backbone: random is a choice ("random"), pretrained is "timm" or a file.
        raise WeightsError(f"no weights chosen for backbone {config.backbone!r}: pass a weights file, 'timm' "
                           f"(timm's pretrained {pretrained_tag(config.backbone)}), or {RANDOM!r} on purpose")
    callbacks = callbacks or Callbacks()

    # device, autocast (bf16 on CUDA, float32 on CPU), seeds
    device = pick_device(config.device)
    autocast = autocast_for(device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)

    # model (its pretrained_cfg decides image size and normalization)
    info = task_info(config.suite, config.task, Path(config.data_root))
    model = build_model(config, info.num_classes).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = count_trainable(model)

    # data: decoded once, on the training device
    dc = data_config(model)
    data = load_task(Path(config.data_root), config.suite, config.task, config.protocol, image_size=dc["image_size"],
                     mean=dc["mean"], std=dc["std"], device=device, on_progress=callbacks.on_data)

    # optimizer and the per-iteration schedule
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total_steps, warmup_steps = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch

    # resume
    start_epoch, step, history = 0, 0, []
    state = check_resume(config, resume_from) if resume_from is not None else None
    if state is not None:
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, step, history = state["epoch"], state["step"], json.loads(state["history"])
        torch.set_rng_state(state["rng_cpu"])
        generator.set_state(state["rng_data"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], device)

    callbacks.on_start(model, data)

    # loop
    eval_every = config.eval_every or (1 if config.protocol == "search" else config.epochs)
    score_key = "val_acc" if config.protocol == "search" else "test_acc"
    model.train()
    for epoch in range(start_epoch, config.epochs):
        seen = correct = 0
        loss_sum = 0.0
        start = time.perf_counter()
        for i, (x, y) in enumerate(data.train.batches(config.batch_size, shuffle=True, generator=generator,
                                                       train_transform=True)):
            lr = lr_at(step, total_steps, warmup_steps, config.lr, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += int(y.numel())
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((logits.argmax(-1) == y).sum())
            callbacks.on_step(epoch, i + 1, steps_per_epoch, {
                "loss": loss_sum / seen, "acc": 100.0 * correct / seen, "lr": lr,
                "images_per_s": seen / max(1e-9, time.perf_counter() - start)})
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                                   "lr": lr, "images_per_s": seen / max(1e-9, time.perf_counter() - start)}
        if (epoch + 1) % eval_every == 0 or epoch + 1 == config.epochs:
            metrics[score_key] = evaluate(model, data.eval, config.eval_batch_size, autocast)
        metrics["epoch_seconds"] = time.perf_counter() - start  # training + evaluation, for overhead accounting
        metrics["train_seconds"] = sum(h["epoch_seconds"] for h in history) + metrics["epoch_seconds"]
        history.append(metrics)

        # checkpoint: everything needed to continue exactly here
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        if ckpt is not None:
            ckpt.mkdir(parents=True, exist_ok=True)
            state = {"config": config.to_dict(), "trainable": _trainable_state(model),
                     "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                     "history": json.dumps(history), "rng_cpu": torch.get_rng_state(),
                     "rng_data": generator.get_state()}
            if device.type == "cuda":
                state["rng_cuda"] = torch.cuda.get_rng_state(device)
            _save_atomic(state, ckpt / CHECKPOINT)
        callbacks.on_epoch(dict(metrics), ckpt)

    final = history[-1]
    result = {"backbone": config.backbone, "weights": config.weights_used(), "task": config.task,
              "suite": config.suite, "method": config.method,
              "protocol": config.protocol, "epochs": config.epochs, "seed": config.seed, "lr": config.lr,
              "weight_decay": config.weight_decay, "dropout": config.dropout, "batch_size": config.batch_size,
              "num_classes": info.num_classes, "trainable_params": params, score_key: final[score_key],
              "train_loss": final["train_loss"], "images_per_s": final["images_per_s"], "history": history}
    if keep is not None:
        keep.update(model=model, data=data)
    return result
