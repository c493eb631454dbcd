"""MLflow logging, done by the driver only, through MLflow's own client.

The driver is the one writer: with the embedded SQLite store, many trial
processes writing one file is the classic "database is locked", and trials
never need the tracking URI (so the Ray pitfall of trials logging to a local
``mlruns`` cannot happen). Every write is keyed by tags and safe to repeat: a
resumed sweep finds its runs again instead of duplicating them.

Layout: experiment ``alore/<sweep>`` holds a parent run per cell with nested
child runs per trial; experiment ``alore/leaderboard/<backbone>`` holds one run
per (task, method) final result, for sorting and filtering in the MLflow UI.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from db.urls import mask_text

# A tracking server that went away should cost seconds, not MLflow's default minutes of retries:
# the sweep goes on and the cell is logged later (see orchestrator.sweep.PendingTracking).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema set-up chatter on first use


class TrackingUnavailable(Exception):
    """MLflow could not be written; the message has no credentials."""


def guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingUnavailable:
            raise
        except Exception as err:  # any client or transport failure: the server is away or refuses
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise TrackingUnavailable(mask_text(f"{type(err).__name__}: {first}")[:300]) from None

    return wrapper


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = mask_text(str(value))[:6000]  # no credentials in params
    return out


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None) -> None:
        self.client = MlflowClient(tracking_uri)
        self.artifact_root = artifact_root

    @guarded
    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = (self.artifact_root / name.replace("/", "_")).as_uri() if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    @guarded
    def find_or_create_run(self, experiment_id: str, key: str, name: str, tags: dict[str, str],
                           parent: str | None = None, params: dict[str, Any] | None = None,
                           history: list[dict[str, Any]] | None = None) -> str:
        """The run tagged ``alore.key == key``; created (with ``params`` and ``history``) on first use only."""
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`alore.key` = '{key}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**tags, "alore.key": key}
        if parent:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        run_id = self.client.create_run(experiment_id, tags=tags, run_name=name).info.run_id
        if params or history:
            self.log(run_id, params=params, history=history)
        return run_id

    @guarded
    def log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            history: list[dict[str, Any]] | None = None, tags: dict[str, str] | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if _finite(v)]
        for row in history or []:
            step = int(row.get("epoch", row.get("training_iteration", 0)))
            batch += [Metric(k, float(v), now, step) for k, v in row.items()
                      if k in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "images_per_s") and _finite(v)]
        existing = set(self.client.get_run(run_id).data.params) if params else set()
        plist = [Param(k, v) for k, v in flatten(params or {}).items() if k not in existing]
        # MLflow's batch limits: 100 params, 1000 metrics per call.
        for i in range(0, len(plist), 90):
            self.client.log_batch(run_id, params=plist[i:i + 90])
        for i in range(0, len(batch), 900):
            self.client.log_batch(run_id, metrics=batch[i:i + 900])
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    @guarded
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @guarded
    def artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    @guarded
    def artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
