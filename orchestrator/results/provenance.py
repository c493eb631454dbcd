"""Provenance of a finished cell for ``alorectl analyze``: where its adapter is, how to rebuild it, where the
analysis goes and which MLflow run it is logged to.

A cell is found by name in the leaderboard database (its newest result of backbone/task/method) or given as a
folder (``--from DIR``: a sweep cell, an ``alorectl export`` or an ``alorectl train`` run); every name is
checked before anything is read, and every file is checked against what it claims (:mod:`alore.verify`)
before a model is built from it. The backbone weights and data root are the ones the run recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alore import analysis, verify
from alore.backbones import resolve
from alore.data import DEMO_TASKS
from alore.device import autocast_for, pick_device
from alore.errors import ConfigError, WeightsError
from alore.methods import get_method

from alorectl.security import check_name, inside


@dataclasses.dataclass(frozen=True)
class CellFiles:
    """A finished cell: its adapter and everything needed to rebuild and score it."""

    folder: Path
    adapter: analysis.AdapterInfo
    task: str
    suite: str
    weights: str | None
    data_root: Path
    seed: int
    mlflow_run_id: str | None
    from_folder: bool  # --from: outputs go next to it, not into the work folder


# ---- finding the cell -------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    """A JSON file of a result or export folder: never through a link, bounded (:func:`alore.verify.read_json`)."""
    return verify.read_json(path)


def _from_folder(folder: Path) -> tuple[analysis.AdapterInfo, dict[str, Any], dict[str, Any], str | None]:
    """(adapter, stored config, metrics, MLflow run) of a run, cell or export folder, each file checked against
    what it claims (an export's card against its adapter and weights) before anything is built from it."""
    info = analysis.read_adapter_info(folder)
    if verify.exists(folder / "card.json"):  # an export folder: the card's claims, the weights, their sha256
        verify.export_folder(folder, "card.json", analysis.load.ADAPTER, "model.safetensors")
    card, result = _read_json(folder / "card.json"), _read_json(folder / "result.json")  # export / sweep cell
    config = dict(card.get("config") or result.get("config") or {})
    for key in ("suite", "seeds"):
        config.setdefault(key, card.get(key, result.get(key)))
    return info, config, _read_json(folder / "metrics.json"), card.get("mlflow_run_id")


def _from_store(workdir: Path, db_flag: str | None, backbone: str, task: str, method: str,
                sweep: str | None) -> tuple[Path, Any]:
    """(cell folder, result row) from the leaderboard database; never creates one."""
    from alorectl import db

    from alorectl.results.store import open_results

    with open_results(workdir, db_flag, remedy="pass --from DIR") as engine:
        row = db.find_result(engine, backbone, task, method, sweep)
    folder = Path(row.artifact_uri or "")
    if not row.artifact_uri or not verify.exists(folder / analysis.load.ADAPTER):
        raise WeightsError(f"the files of {backbone}/{task}/{method} are missing from {row.artifact_uri!r}; "
                           "pass --from DIR")
    # The result folder's files are the result the row records (no links, the tensors their metadata implies).
    verify.run_files(folder, row.backbone, row.task, row.method, analysis.load.ADAPTER, "merged.safetensors")
    return folder, row


def _weights_arg(recorded: Any) -> str | None:
    """The ``weights`` argument of ``create_backbone`` for what a run recorded: None/"random" (a random
    backbone, rebuilt from the run's seed), "timm:<tag>" (timm's pretrained weights) or a file."""
    if recorded in (None, "random"):
        return None
    return "timm" if str(recorded).startswith("timm:") else str(recorded)


def locate(workdir: Path, db_flag: str | None, backbone: str | None, task: str | None, method: str | None,
           sweep: str | None, source: Path | None, weights: str | None, data_root: Path | None,
           experts_for: str | None = None) -> CellFiles:
    """Where the cell's files are and how to rebuild it; every name is checked before anything is read.

    ``experts_for``: the analysis that needs ALoRE's experts (refuses any other adapter).
    """
    for kind, value in (("backbone", backbone), ("task", task), ("method", method), ("sweep", sweep)):
        if value is not None:
            check_name(kind, value)
    if backbone is not None:
        resolve(backbone)
    if method is not None:
        get_method(method)
    if source is not None:
        info, config, metrics, run_id = _from_folder(source)
        stored = {"backbone": info.backbone, "task": info.task or metrics.get("task"), "method": info.method}
        for kind, given in (("backbone", backbone), ("task", task), ("method", method)):
            if given is not None and given != stored[kind]:
                raise ConfigError(f"{source} holds {stored['backbone']}/{stored['task']}/{stored['method']}, "
                                  f"not --{kind} {given}")
        folder = source
    else:
        if backbone is None or task is None:
            raise ConfigError("pass --backbone and --task (or --from DIR)")
        folder, row = _from_store(workdir, db_flag, backbone, task, method or "alore", sweep)
        info, config, metrics, run_id = (analysis.read_adapter_info(folder), dict(row.config or {}),
                                         _read_json(folder / "metrics.json"), row.mlflow_run_id)
        config.setdefault("seeds", row.seeds)
        config.setdefault("suite", row.suite)
    if experts_for and not info.has_experts:
        raise ConfigError(f"{experts_for} needs an alore or alore_attn adapter; {folder} holds {info.method!r}")
    name = info.task or metrics.get("task") or config.get("task")
    if not name:
        raise ConfigError(f"{folder}: the adapter does not say which task it was trained on; pass --task")
    check_name("task", name)
    demo_weights = workdir / "data" / "demo.safetensors"
    if weights is None:
        if "weights" in config:  # a sweep's stored config
            weights = _weights_arg(config["weights"])
        elif "weights" in metrics:  # what train.fit recorded
            weights = _weights_arg(metrics["weights"])
        elif info.backbone == "demo" and demo_weights.is_file():
            weights = str(demo_weights)
        else:
            raise ConfigError(f"the weights {info.backbone} started from are unknown; pass --weights FILE")
    if data_root is None:
        stored_root = config.get("data_root")
        if stored_root:
            data_root = Path(stored_root)
        elif name in DEMO_TASKS:
            data_root = workdir / "data" / "vtab-1k"
        else:
            raise ConfigError(f"the data root of {name!r} is unknown; pass --data-root DIR")
    seeds = config.get("seeds") or []
    seed = int(metrics.get("seed") or config.get("seed") or (min(seeds) if seeds else 42))
    return CellFiles(folder, info, name, str(config.get("suite") or metrics.get("suite") or "vtab"), weights,
                     Path(data_root), seed, run_id, source is not None)


def rebuild(cell: CellFiles, device: str, limit: int | None = None) -> tuple[Any, Any, Any]:
    """(model, eval split, autocast) of ``cell`` on ``device``."""
    import torch

    dev = pick_device(device)
    if cell.weights is None:
        torch.manual_seed(cell.seed)  # a run without weights started from this seed's random backbone (train.fit)
    model = analysis.load_model(cell.adapter, cell.weights, dev)
    split = analysis.load_eval_split(model, cell.data_root, cell.suite, cell.task, cell.adapter.num_classes, dev)
    return model, analysis.subset(split, limit), autocast_for(dev)


def output_folder(out: Path | None, workdir: Path, cell: CellFiles) -> Path:
    """``--out``, else ``DIR/analysis`` for ``--from DIR``, else ``<workdir>/analysis/<backbone>/<task>``."""
    if out is None:
        out = (cell.folder / "analysis" if cell.from_folder
               else inside(workdir, "analysis", cell.adapter.backbone, cell.task))
    out.mkdir(parents=True, exist_ok=True)
    return out


# ---- logging the result -------------------------------------------------------------------------

def mlflow_runs(uri: str, cells: list[CellFiles], warn: Callable[[str], None]) -> Any:
    """The tracker of the cells' MLflow runs, each run checked to be its own cell's (backbone, task and method
    tags) before anything is computed or logged: a card or row naming another cell's run is refused (exit 2).
    None when no cell has a run, or the store is missing or unreachable (one warning: the analysis is kept
    locally only)."""
    runs = [c for c in cells if c.mlflow_run_id]
    if not runs:
        return None
    from alorectl.db.urls import mask_text

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        warn(f"MLflow store {mask_text(uri)} not found; the analysis is kept locally only")
        return None
    from alorectl.tracking.client import Tracker, TrackingUnavailable, check_run_of

    tracker = Tracker(uri)  # the one MLflow writer: short retries, credentials off every URL
    try:
        for cell in runs:
            check_run_of(tracker, cell.mlflow_run_id, cell.adapter.backbone, cell.task, cell.adapter.method)
    except TrackingUnavailable as err:  # an unreachable or refusing store must not lose the local output
        warn(f"could not reach MLflow at {mask_text(uri)} ({err}); the analysis is kept locally only")
        return None
    return tracker


def log_to_mlflow(tracker: Any, run_id: str | None, paths: list[Path], warn: Callable[[str], None],
                  say: Callable[[str], None]) -> None:
    """Attach ``paths`` to the cell's MLflow run (checked by :func:`mlflow_runs`) under ``analysis/``; one warning
    line if that fails."""
    if tracker is None or run_id is None:
        return
    from alorectl.tracking.client import TrackingUnavailable

    try:
        for path in paths:
            tracker.artifact(run_id, path, "analysis")
    except TrackingUnavailable as err:  # an unreachable or refusing store must not lose the local output
        warn(f"could not log to MLflow run {run_id} ({err}); the analysis is kept locally only")
        return
    say(f"logged {len(paths)} file(s) to MLflow run {run_id} (artifacts/analysis)")
