"""What an exported result is in plain timm: the model name, ``num_classes`` and the preprocessing overlay.

Shared by ``alorectl export`` (the card) and the MLflow models of :mod:`alorectl.tracking.models`, so that a
file export and a model loaded from MLflow's registry are the same timm module with the same transform.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from torch import nn

from alore.artifacts import MERGED, METRICS
from alore.backbones import create_backbone, data_config, resolve
from alore.data import Preprocess


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
    if not (source / MERGED).is_file():
        return None
    metrics = json.loads((source / METRICS).read_text()) if (source / METRICS).is_file() else {}
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
