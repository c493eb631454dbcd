"""Exporting a result: the chosen row's weights and a card that loads them from anywhere.

``alorectl export`` calls :func:`export_result`; everything else here is
the domain of an export: which row (``--method best`` is chosen by val200
accuracy, never by test), the timm preprocessing that reproduces alore's
evaluation, the card (with a ``load`` line for plain timm when the method
merged, and ``alore.load_export(path)`` for every method), and writing the
folder whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from alore import verify
from alore.analysis.load import read_adapter_info
from alore.api import mergeable_methods
from alore.artifacts import ADAPTER, MERGED, METRICS
from alore.backbones import create_backbone, data_config, resolve
from alore.data import Preprocess
from alore.errors import AloreError
from alorectl import db, defaults
from alorectl.db.lookup import BEST

from .store import open_results

#: What an export folder holds; ``--force`` replaces exactly these.
EXPORT_FILES = ("model.safetensors", "adapter.safetensors", "card.json")
#: The evaluation transform of a loaded export (the model's ``pretrained_cfg`` holds the preprocessing).
TRANSFORM = "timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))"


@dataclasses.dataclass(frozen=True)
class Exported:
    out: Path
    card: dict[str, Any]
    chosen_by_val: bool  # ``--method best``: the method with the best val200 accuracy
    row: Any = None      # the result's database row
    source: Path | None = None  # the final run's files


@dataclasses.dataclass(frozen=True)
class PlainTimm:
    """How to build a result's merged weights as a plain timm module."""

    backbone: str
    timm_name: str
    timm_kwargs: dict[str, Any]
    num_classes: int
    preprocessing: dict[str, Any]
    weights: Path            # merged.safetensors

    def overlay(self, file: str | Path) -> dict[str, Any]:
        """timm's ``pretrained_cfg_overlay``: the weights file, the head size and the preprocessing fields."""
        return {"file": str(file), "num_classes": self.num_classes, **self.preprocessing}

    def create(self) -> nn.Module:
        """The timm module with the merged weights loaded, in eval mode."""
        import timm

        return timm.create_model(self.timm_name, pretrained=True, num_classes=self.num_classes,
                                 pretrained_cfg_overlay=self.overlay(self.weights), **self.timm_kwargs).eval()


def plain_timm(backbone: str, suite: str, source: Path, num_classes: int | None = None) -> PlainTimm | None:
    """The plain timm form of the final files in ``source``; None for a method that cannot be merged."""
    source = Path(source)
    if not verify.exists(source / MERGED):
        return None
    metrics = verify.read_json(source / METRICS)
    classes = int(metrics.get("num_classes") or num_classes or 0)
    spec = resolve(backbone)
    dc = data_config(create_backbone(backbone, classes, device="meta"))
    return PlainTimm(backbone, spec.timm_name, dict(spec.kwargs), classes,
                     timm_preprocessing(suite, dc["image_size"], dc["mean"], dc["std"]), source / MERGED)


def timm_preprocessing(suite: str, image_size: int, mean: Any, std: Any) -> dict[str, Any]:
    """alore's evaluation preprocessing (:mod:`alore.data.decoded`) as timm ``pretrained_cfg`` fields.

    With these in the model's ``pretrained_cfg``,
    ``timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))``
    is the transform the model was trained and scored with (timm's
    ``transforms_imagenet_eval``, then ``ToTensor`` and ``Normalize(mean, std)``):

    * VTAB: resized straight to ``image_size²``, bicubic (NOAH's
      ``Resize((224, 224), interpolation=3)``) = timm's ``squash`` mode at
      ``crop_pct=1.0`` (resize each edge to size/1.0, centre-crop nothing).
      timm's own default (``center``, ``crop_pct`` 0.875-0.9) keeps the aspect
      ratio and cuts the border: the demo export scored 61.75% that way
      instead of its 70.75%.
    * FGVC: shorter side to ``stored_size`` (bilinear), centre ``image_size²``
      = timm's ``center`` mode, whose shorter side is
      ``floor(image_size / crop_pct)``.  (alore crops twice, to the stored
      square then to the input; the offsets agree exactly when
      ``stored_size - image_size`` is even, as 256 - 224 is.)
    """
    pre = Preprocess.for_suite(suite, image_size, mean, std)
    size = pre.image_size
    if pre.crop:
        crop_pct, crop_mode, interpolation = size / pre.stored_size, "center", "bilinear"
        while math.floor(size / crop_pct) < pre.stored_size:  # float division must not land a pixel short
            crop_pct = math.nextafter(crop_pct, 0.0)
    else:
        crop_pct, crop_mode, interpolation = 1.0, "squash", "bicubic"
    return {"input_size": (3, size, size), "interpolation": interpolation, "crop_pct": crop_pct,
            "crop_mode": crop_mode, "mean": pre.mean, "std": pre.std}


def export_result(workdir: Path, db_flag: str | None, tracking_uri: str | None, backbone: str, task: str,
                  method: str, out: Path, force: bool = False, register: bool = False) -> Exported:
    """Write ``out``/model.safetensors (merged methods), adapter.safetensors and card.json, whole or not at all."""
    with open_results(workdir, db_flag) as engine:
        fake = db.simulated_only(engine, backbone, task, method)
        if fake is not None:
            raise AloreError(f"{backbone}/{task}/{method} has only a simulated result (sweep {fake!r}, made by "
                             "alorectl bench scale): its weights are stand-ins, there is nothing to export")
        row = db.find_result(engine, backbone, task, method)
    source = Path(row.artifact_uri or "")
    if not row.artifact_uri or not verify.exists(source / ADAPTER):
        raise AloreError(f"the files of {backbone}/{task}/{row.method} are missing from {source}")
    # Each file against the result it is published as, before anything is written (no links, bounded sizes,
    # the tensors its metadata implies, the metadata this row's backbone/task/method): alore.verify.
    verify.run_files(source, row.backbone, row.task, row.method, ADAPTER, MERGED)
    if out.exists() and not out.is_dir():
        raise AloreError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise AloreError(f"--out {out} is not empty; name a new folder, or pass --force to replace its export files")
    if register:  # refused before anything is written
        check_registrable(backbone, task, row, source / MERGED)
        check_registrable_run(row, defaults.tracking_uri(workdir, tracking_uri))
    with _staging(out) as stage:
        files: dict[str, str] = {}
        if verify.exists(source / MERGED):
            verify.copy(source / MERGED, stage / "model.safetensors")
        verify.copy(source / ADAPTER, stage / "adapter.safetensors")
        # What is published is what was copied: checked again in the private stage.
        verify.run_files(stage, row.backbone, row.task, row.method, "adapter.safetensors", "model.safetensors")
        card = make_card(row, source, stage, out.resolve(), defaults.tracking_uri(workdir, tracking_uri))
        for name in ("model.safetensors", "adapter.safetensors"):
            if (stage / name).is_file():
                files[name] = verify.sha256(stage / name)
        card["sha256"] = files
        (stage / "card.json").write_text(json.dumps(card, indent=2, default=str))
        _publish(stage, out)
    return Exported(out, card, chosen_by_val=method == BEST, row=row, source=source)


def make_card(row: Any, source: Path, stage: Path, where: Path, tracking_uri: str) -> dict[str, Any]:
    """The card of the result ``row`` (run files in ``source``, copied to ``stage``) as it will be read in
    the absolute folder ``where``."""
    spec = resolve(row.backbone)
    metrics = verify.read_json(source / METRICS)
    classes = int(metrics.get("num_classes") or row.config.get("num_classes") or 0)
    # What the run's data pipeline used: fit() reads data_config of this same backbone (no weights needed).
    dc = data_config(create_backbone(row.backbone, classes, device="meta"))
    preprocessing = timm_preprocessing(row.suite, dc["image_size"], dc["mean"], dc["std"])
    merged = (stage / "model.safetensors").is_file()
    info = read_adapter_info(stage)  # the method's options as the adapter file records them
    kwargs = dict(spec.kwargs)
    overlay = {"file": str(where / "model.safetensors"), "num_classes": classes, **preprocessing}
    alore_load = f"alore.load_export({str(where)!r})"
    if merged:
        load = (f"timm.create_model({spec.timm_name!r}, pretrained=True, num_classes={classes}, "
                f"pretrained_cfg_overlay=dict({_kwargs_text(overlay)})"
                + (f", {_kwargs_text(kwargs)}" if kwargs else "") + ")")
        snippet = f"import timm\nmodel = {load}.eval()\ntransform = {TRANSFORM}\n"
    else:
        load = alore_load
        snippet = f"import alore, timm\nmodel = {load}\ntransform = {TRANSFORM}\n"
    return {
        "backbone": row.backbone, "timm_name": spec.timm_name, "timm_kwargs": kwargs, "num_classes": classes,
        "task": row.task, "suite": row.suite, "method": row.method, "method_options": info.method_config,
        "config": row.config, "seeds": row.seeds,
        "epochs": row.epochs, "val_acc": row.val_acc, "test_acc": row.test_acc_mean, "test_acc_std": row.test_acc_std,
        "weights_test_acc": metrics.get("test_acc"),  # these weights' own run (test_acc: mean over seeds)
        "trainable_params": row.trainable_params, "mlflow_run_id": row.mlflow_run_id,
        "mlflow_tracking_uri": db.urls.mask_text(tracking_uri),
        "backbone_weights": (row.config or {}).get("weights"),
        "merged": merged,
        "preprocessing": preprocessing,
        "pretrained_cfg_overlay": overlay if merged else None,
        "load": load,
        "load_alore": alore_load,
        "transform": TRANSFORM,
        "snippet": snippet,
        "note": ("load: plain timm (no alore needed) for a merged export, else alore.load_export, which rebuilds "
                 "backbone + method + adapter (the backbone's weights: backbone_weights, or pass weights=FILE); "
                 "the paths are absolute: after moving the folder, call alore.load_export(new_path). "
                 "num_classes must be in pretrained_cfg_overlay too, or timm drops the trained head; the "
                 "preprocessing fields make timm's eval transform the one the model was trained and scored with"),
    }


def _kwargs_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items())


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A private folder next to ``out`` (same file system: moving its files in is a rename), removed on exit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # gone already when it became ``out``


def _publish(stage: Path, out: Path) -> None:
    """Move the staged export into ``out``: a new folder is one rename; into an existing one, the weights
    first and card.json last, and a file of an earlier export that this one lacks (model.safetensors of
    a merged method, now an unmerged one) is removed, so the folder never disagrees with its card."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)  # mkdtemp made it owner-only; an export is an ordinary folder
    if not out.exists():
        try:
            stage.rename(out)
            return
        except OSError:  # created meanwhile: move the files in below
            out.mkdir(exist_ok=True)
    staged = {p.name for p in stage.iterdir()}
    for name in sorted(staged - {"card.json"}):
        os.replace(stage / name, out / name)
    for name in set(EXPORT_FILES) - staged:
        (out / name).unlink(missing_ok=True)
    os.replace(stage / "card.json", out / "card.json")


# ---- MLflow's model registry (``alorectl export --register``) ------------------------------------

def check_registrable(backbone: str, task: str, row: Any, merged: Path) -> None:
    if row.method not in mergeable_methods():
        raise AloreError(f"--register: {row.method} cannot be merged into plain timm, so {backbone}/{task}/"
                         f"{row.method} has no MLflow model; mergeable methods: {', '.join(mergeable_methods())}")
    if not verify.exists(merged):
        raise AloreError(f"--register: the merged weights of {backbone}/{task}/{row.method} are missing: {merged}")
    if not row.mlflow_run_id:
        raise AloreError(f"--register: {backbone}/{task}/{row.method} is not in MLflow yet; "
                         "alorectl sweep resume NAME logs it")
    if row.val_acc is None:
        raise AloreError(f"--register: {backbone}/{task}/{row.method} has no val accuracy to rank it by")


def check_registrable_run(row: Any, uri: str) -> None:
    """The result's MLflow run is this result's (its backbone/task/method tags) before a model is logged into it."""
    from alore.errors import first_line
    from alorectl.tracking.client import Tracker, TrackingUnavailable, check_run_of

    path = uri.removeprefix("sqlite:///").split("?", 1)[0] if uri.startswith("sqlite:///") else None
    if path is not None and not Path(path).is_file():  # not created here: the run cannot be in it
        raise AloreError(f"--register: MLflow run {row.mlflow_run_id} is not in the tracking store "
                         f"{db.urls.mask_text(uri)} (it does not exist); pass the --tracking-uri the sweep logged to")
    try:
        check_run_of(Tracker(uri), row.mlflow_run_id, row.backbone, row.task, row.method)
    except TrackingUnavailable as err:
        raise AloreError(db.urls.mask_text(f"--register: MLflow refused: {first_line(err)}")[:400]) from None


def register_result(done: Exported, backbone: str, task: str, uri: str) -> Any:
    """The exported result's MLflow model (logged now if its sweep predates models) registered as
    ``alore-<backbone>-<task>``; the alias moved when its val200 accuracy is the best."""
    from alore.errors import first_line
    from alorectl.tracking.client import Tracker
    from alorectl.tracking.models import has_model, log_model, register

    row, card = done.row, done.card
    verify.merged(done.source / MERGED, row.backbone, int(card["num_classes"]))  # what a model is logged from
    tracker = Tracker(uri)
    try:
        if not has_model(tracker.client, row.mlflow_run_id):
            log_model(tracker.client, row.mlflow_run_id, backbone, row.suite, done.source,
                      {k: card[k] for k in ("backbone", "task", "method", "val_acc", "test_acc", "suite")})
        return register(tracker.client, backbone, task, row.mlflow_run_id, row.val_acc, tags={"method": row.method})
    except Exception as err:  # the server refused, or is away: one line, no credentials
        raise AloreError(db.urls.mask_text(f"--register: MLflow refused: {first_line(err)}")[:400]) from None

