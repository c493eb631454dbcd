"""A sweep's results as MLflow models, and the best of each (backbone, task) in MLflow's model registry.

* Each cell's final run (its run in ``alore/<sweep>``) gets an MLflow model at
  ``model/``: the merged weights of the run whose files the cell keeps (the ones
  ``alorectl export`` exports) as a plain timm module, in MLflow's ``pytorch``
  flavour, with the timm model name, ``num_classes`` and the preprocessing
  overlay in the module's ``pretrained_cfg`` and in the model's metadata. So
  ``mlflow.pytorch.load_model(uri)`` returns the timm module in eval mode, and
  ``timm.data.create_transform(**timm.data.resolve_data_config({}, model=m))``
  is the transform it was scored with. Methods that cannot be merged (VPT,
  Adapter, AdaptFormer) have no plain timm form and get no model.
* ``alore-<backbone>-<task>`` in the registry: a version per registered cell
  run (once per run), and the alias ``best`` on the version with the highest
  val200 accuracy; a later sweep with a better result moves the alias, the old
  version stays.

The pytorch flavour stores the module with pickle (``serialization_format="pickle"``;
MLflow's other format, ``pt2``, is a traced graph and no longer a timm module):
loading a model trusts the tracking server the way loading any pickle trusts
its file. The weights themselves also stay in the run as safetensors
(``final/merged.safetensors``), which ``alorectl export`` reads without pickle.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

MODEL_PATH = "model"      # the model's folder in its run's artifacts
ALIAS = "best"
VAL_TAG = "val_acc"       # a version's val200 accuracy, what the alias is moved by


def registered_name(backbone: str, task: str) -> str:
    return f"alore-{backbone}-{task}"


def log_model(client: MlflowClient, run_id: str, backbone: str, suite: str, source: Path,
              card: dict[str, Any]) -> bool:
    """Log the merged weights in ``source`` as the run's MLflow model; False when the method cannot merge."""
    import mlflow.pytorch
    import timm
    import torch

    from alorectl.results.export import plain_timm

    plain = plain_timm(backbone, suite, source)
    if plain is None:
        return False
    module = plain.create()
    # What the module says about itself once loaded: where its weights came from is this model, not a local file.
    module.pretrained_cfg = {**module.pretrained_cfg, **plain.overlay(""), "file": None}
    metadata = {"timm_name": plain.timm_name, "timm_kwargs": plain.timm_kwargs, "num_classes": plain.num_classes,
                "pretrained_cfg_overlay": {k: v for k, v in plain.overlay("").items() if k != "file"}, **card}
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]
    with tempfile.TemporaryDirectory(prefix="alore-model-") as tmp:
        mlflow.pytorch.save_model(module, Path(tmp) / MODEL_PATH, serialization_format="pickle",
                                  pip_requirements=requirements, metadata=metadata)
        client.log_artifacts(run_id, str(Path(tmp) / MODEL_PATH), MODEL_PATH)
    return True


def has_model(client: MlflowClient, run_id: str) -> bool:
    return any(f.path == f"{MODEL_PATH}/MLmodel" for f in client.list_artifacts(run_id, MODEL_PATH))


@dataclasses.dataclass(frozen=True)
class Registered:
    name: str
    version: str
    moved: bool               # the alias now points at this version
    best_version: str


def register(client: MlflowClient, backbone: str, task: str, run_id: str, val_acc: float,
             tags: dict[str, str] | None = None) -> Registered:
    """Register the model of ``run_id`` as a version of ``alore-<backbone>-<task>`` (once per run) and move the
    alias ``best`` to it when its val200 accuracy beats the version the alias is on."""
    from mlflow.exceptions import MlflowException

    name = registered_name(backbone, task)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"backbone": backbone, "task": task},
                                       description=f"The best alore adapter of {backbone} on {task} (by val200 "
                                                   f"accuracy), merged into plain timm: models:/{name}@{ALIAS}")
    mine = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if mine:
        version = mine[0]
    else:
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_PATH}"
        version = client.create_model_version(name, source, run_id=run_id,
                                              tags={VAL_TAG: repr(float(val_acc)), **(tags or {})})
    try:
        current = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        current = None
    better = current is None or float(current.tags.get(VAL_TAG, "-inf")) < float(val_acc)
    if better and (current is None or current.version != version.version):
        client.set_registered_model_alias(name, ALIAS, version.version)
    best = version.version if better else current.version
    return Registered(name, str(version.version), best == version.version, str(best))
