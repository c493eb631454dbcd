"""The sweep driver: preset → plan of cells → Ray Tune experiments → MLflow + the database.

Each cell (backbone × task × method) is two Tune experiments: the search
(Optuna TPE or the full grid on the ``search`` protocol, train800 → val200,
optionally ASHA-pruned on per-epoch val accuracy), then the best configuration
retrained on the ``final`` protocol (train800val200 → test) for every seed.
Test images are never seen before the final runs.

The driver is the one writer of the database and of MLflow. Every write is
keyed, so a resumed sweep continues where it stopped: finished cells are
skipped and Tune experiments are restored (trials, checkpoints and the Optuna
searcher's state) with ``Tuner.restore``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.result_grid import ResultGrid
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

import db
from alore.data import DEMO_TASKS, task_info, write_demo_dataset
from alore.errors import AloreError, DataError
from db.urls import mask_text, mask_url

from . import defaults
from .preset import SHARED_SPACE, Preset
from .tracking import Tracker, TrackingUnavailable
from .trial import run_trial

METRIC, MODE = "val_acc", "max"
SEARCHED = (*SHARED_SPACE, "method_options")  # the trial config keys a search chooses


def chosen_params(config: dict[str, Any], *extra: str) -> dict[str, Any]:
    """The chosen hyper-parameters of a trial config (plus ``extra`` keys such as the seed)."""
    return {k: config[k] for k in (*SEARCHED, *extra) if k in config}


@dataclasses.dataclass
class Settings:
    """Where a sweep runs and writes; the embedded default needs none of the flags."""

    name: str
    workdir: Path
    tracking_uri: str
    db_url: str
    address: str | None = None

    @classmethod
    def embedded(cls, name: str, workdir: Path, tracking_uri: str | None = None, db_url: str | None = None,
                 address: str | None = None) -> Settings:
        workdir = workdir.resolve()
        return cls(name, workdir, defaults.tracking_uri(workdir, tracking_uri), defaults.db_url(workdir, db_url),
                   address)

    @property
    def storage(self) -> Path:
        return self.workdir / "ray"

    @property
    def artifacts(self) -> Path:
        return self.workdir / "artifacts"


@dataclasses.dataclass(frozen=True)
class Cell:
    backbone: str
    task: str
    method: str

    @property
    def key(self) -> str:
        return f"{self.backbone}__{self.task}__{self.method}"


def cells(preset: Preset) -> list[Cell]:
    return [Cell(b, t, m) for b in preset.backbones for t in preset.tasks for m in preset.methods]


def resolve_inputs(preset: Preset, settings: Settings) -> tuple[Path, dict[str, str | None]]:
    """The data root and per-backbone weights, with ``{workdir}`` filled in; checked before anything runs."""
    fill = lambda s: s.replace("{workdir}", str(settings.workdir))  # noqa: E731
    root = Path(fill(preset.data_root)).expanduser().resolve()
    weights = {b: fill(preset.weights[b]) if b in preset.weights else None for b in preset.backbones}
    if not root.exists() and all(t in DEMO_TASKS for t in preset.tasks):
        # The demo makes its own data (and demo backbone) the first time.
        from alore.demo_backbone import write_demo_weights

        write_demo_dataset(root.parent)
        write_demo_weights(root.parent)
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (pass --data-root DIR)")
    for task in preset.tasks:
        task_info(preset.suite, task, root)
    for backbone, w in weights.items():
        if w not in (None, "timm", "hub") and not Path(w).is_file():
            raise DataError(f"weights file for {backbone} not found: {w} (pass --weights {backbone}=FILE)")
    return root, weights


def cell_space(preset: Preset, method: str) -> tuple[dict[str, list], dict[str, list]]:
    """(shared hyper-parameters, method options) to search for ``method``."""
    shared = {k: list(v) for k, v in preset.space.items()}
    options: dict[str, list] = {}
    for key, values in preset.method_space.get(method, {}).items():
        (shared if key in SHARED_SPACE else options)[key] = list(values)
    return shared, options


def param_space(preset: Preset, cell: Cell, data_root: Path, weights: str | None, algorithm: str) -> dict[str, Any]:
    shared, options = cell_space(preset, cell.method)
    sample = tune.grid_search if algorithm == "grid" else tune.choice
    space: dict[str, Any] = {
        "base": {"backbone": cell.backbone, "weights": weights, "task": cell.task, "suite": preset.suite,
                 "data_root": str(data_root), "method": cell.method, "epochs": preset.epochs,
                 "warmup_epochs": preset.warmup_epochs, "batch_size": preset.batch_size, "device": "auto"},
        "protocol": "search",
        "seed": preset.seeds[0],
        **{k: sample(v) for k, v in shared.items()},
    }
    if options:
        space["method_options"] = {k: sample(v) for k, v in options.items()}
    return space


class TrialProgress(tune.Callback):
    """Forwards finished trials to the driver's progress display."""

    def __init__(self, on_done: Callable[[Any, bool], None] | None,
                 on_start: Callable[[Any], None] | None = None) -> None:
        self.on_done, self.on_start = on_done, on_start

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the run config for Tuner.restore; a live display does not travel.
        return {"on_done": None, "on_start": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.on_start:
            self.on_start(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.on_done:
            self.on_done(trial, True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.on_done:
            self.on_done(trial, False)


@dataclasses.dataclass
class Hooks:
    """What the CLI shows while a sweep runs."""

    on_cell_start: Callable[[Cell, str], None] = lambda cell, phase: None
    on_trial_start: Callable[[Cell, Any], None] = lambda cell, trial: None
    on_trial_done: Callable[[Cell, Any, bool], None] = lambda cell, trial, ok: None
    on_cell_done: Callable[[Cell, dict[str, Any]], None] = lambda cell, result: None
    on_warning: Callable[[str], None] = lambda message: None


def start_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch is deliberate (resume); Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # a busy 2-core laptop is not a Tune bottleneck
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise AloreError(f"cannot reach the Ray cluster at {address}: {first} (check the address; a cluster "
                             "with token authentication also needs RAY_AUTH_MODE=token and its token)") from None
    else:
        # "local": always a new embedded instance, never a cluster someone started with `ray start`.
        ray.init(address="local", include_dashboard=False, **kwargs)


def _tuner(path: Path, trainable: Any, space: dict, tune_config: tune.TuneConfig,
           run_config: tune.RunConfig) -> tune.Tuner:
    if tune.Tuner.can_restore(str(path)):
        # Finished trials stay finished; errored ones are retried; the searcher's state comes back too.
        return tune.Tuner.restore(str(path), trainable, resume_errored=True)
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"  # Tune's default name spells out the whole config


def run_config(settings: Settings, name: str, callbacks: list) -> tune.RunConfig:
    return tune.RunConfig(name=name, storage_path=str(settings.storage), verbose=0, callbacks=callbacks,
                          failure_config=tune.FailureConfig(max_failures=2),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def run_sweep(preset: Preset, settings: Settings, hooks: Hooks | None = None) -> list[dict[str, Any]]:
    hooks = hooks or Hooks()
    data_root, weights = resolve_inputs(preset, settings)
    engine = db.connect(settings.db_url)
    settings.workdir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(settings.tracking_uri, settings.workdir / "mlartifacts")
    sweep_config = {**preset.to_dict(), "tracking_uri": mask_text(settings.tracking_uri),
                    "db": mask_url(settings.db_url)}
    sweep_id = db.upsert_sweep(engine, settings.name, preset=preset.name, suite=preset.suite, config=sweep_config,
                               status="running")
    start_ray(settings.address)
    trainable = tune.with_resources(run_trial, {"cpu": preset.cpus_per_trial, "gpu": preset.gpus_per_trial})
    pending = PendingTracking(settings)
    results = []
    try:
        replay_pending(pending, preset, settings, engine, tracker, hooks)
        done = {(c.backbone, c.task, c.method) for c in db.sweep_status(engine, settings.name).cells
                if c.status == "done"}
        for cell in cells(preset):
            cell_id = db.upsert_cell(engine, sweep_id, cell.backbone, cell.task, cell.method)
            if (cell.backbone, cell.task, cell.method) in done:
                continue
            db.set_cell_status(engine, cell_id, "running")
            pending.add(cell.key)  # until MLflow has the cell: a driver killed after the cell's "done" replays it
            search, final, result = run_cell(preset, settings, cell, cell_id, sweep_id, engine, trainable,
                                             data_root, weights[cell.backbone], hooks)
            track_or_defer(pending, settings, engine, tracker, cell, cell_id, search, final, result, hooks)
            results.append(result)
            hooks.on_cell_done(cell, result)
        db.set_sweep_status(engine, sweep_id, "done")
    except BaseException:
        db.set_sweep_status(engine, sweep_id, "interrupted")
        raise
    try:
        publish_leaderboards(preset, settings, engine, tracker)
    except TrackingUnavailable as err:
        hooks.on_warning(f"the leaderboard artifact was not logged to MLflow: {err}")
    return results


def run_cell(preset: Preset, settings: Settings, cell: Cell, cell_id: int, sweep_id: int, engine: Any,
             trainable: Any, data_root: Path, weights: str | None,
             hooks: Hooks) -> tuple[list, list, dict[str, Any]]:
    """Search, then final runs; writes the database. Returns the Tune results and the cell's result."""
    progress = [TrialProgress(lambda trial, ok: hooks.on_trial_done(cell, trial, ok),
                              lambda trial: hooks.on_trial_start(cell, trial))]

    # 1. search on train800 -> val200
    hooks.on_cell_start(cell, "search")
    algorithm = preset.algorithm
    search_alg = OptunaSearch(metric=METRIC, mode=MODE, seed=0) if algorithm == "optuna" else None
    scheduler = (ASHAScheduler(max_t=preset.epochs, grace_period=max(1, preset.epochs // 10), reduction_factor=2)
                 if preset.scheduler == "asha" else FIFOScheduler())
    tune_config = tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=search_alg, scheduler=scheduler,
                                  num_samples=preset.trials if algorithm == "optuna" else 1,
                                  max_concurrent_trials=preset.max_concurrent, trial_dirname_creator=trial_dirname)
    name = f"{settings.name}__{cell.key}__search"
    space = param_space(preset, cell, data_root, weights, algorithm)
    grid = list(_tuner(settings.storage / name, trainable, space, tune_config,
                       run_config(settings, name, progress)).fit())
    searched = [r for r in grid if r.metrics and METRIC in r.metrics]
    if not searched:
        db.set_cell_status(engine, cell_id, "failed")
        first_error = next((str(r.error).splitlines()[-1] for r in grid if r.error), "no trial reported")
        raise AloreError(f"every search trial of {cell.key} failed: {first_error}")
    for r in grid:
        record_trial(engine, cell_id, r, "search")
    best = max(searched, key=lambda r: r.metrics[METRIC])
    chosen = chosen_params(best.config)
    db.set_cell_status(engine, cell_id, "running", best_config=chosen, best_val_acc=best.metrics[METRIC],
                       seeds=preset.seeds, epochs=preset.epochs)

    # 2. the chosen configuration on train800val200 -> test, once per seed
    hooks.on_cell_start(cell, "final")
    final_space = {**{k: v for k, v in space.items() if k not in SEARCHED},
                   **chosen, "protocol": "final", "seed": tune.grid_search(list(preset.seeds))}
    name = f"{settings.name}__{cell.key}__final"
    final_grid = list(_tuner(settings.storage / name, trainable, final_space,
                             tune.TuneConfig(num_samples=1, max_concurrent_trials=preset.max_concurrent,
                                             trial_dirname_creator=trial_dirname),
                             run_config(settings, name, progress)).fit())
    finals = [r for r in final_grid if r.metrics and "test_acc" in r.metrics and r.checkpoint is not None]
    for r in final_grid:
        record_trial(engine, cell_id, r, "final")
    if len(finals) != len(preset.seeds):
        db.set_cell_status(engine, cell_id, "failed")
        raise AloreError(f"final runs of {cell.key} failed for {len(preset.seeds) - len(finals)} seed(s)")
    accs = [r.metrics["test_acc"] for r in finals]
    first = sorted(finals, key=lambda r: r.config["seed"])[0]
    keep = cell_folder(settings, cell)
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    for f in ("adapter.safetensors", "merged.safetensors", "metrics.json"):
        if (Path(first.checkpoint.path) / f).is_file():
            shutil.copy2(Path(first.checkpoint.path) / f, keep / f)
    result = {"backbone": cell.backbone, "task": cell.task, "method": cell.method, "suite": preset.suite,
              "test_acc_mean": statistics.fmean(accs), "test_acc_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
              "seeds": list(preset.seeds), "val_acc": best.metrics[METRIC],
              "trainable_params": int(first.metrics.get("trainable_params", 0)),
              "config": {**space["base"], **chosen, "weights": weights}, "epochs": preset.epochs,
              "chosen": chosen}
    (keep / "result.json").write_text(json.dumps(result, indent=2))
    db.record_result(engine, sweep_id=sweep_id, artifact_uri=str(keep),
                     **{k: result[k] for k in ("backbone", "task", "method", "suite", "test_acc_mean", "test_acc_std",
                                               "seeds", "val_acc", "trainable_params", "config", "epochs")})
    db.set_cell_status(engine, cell_id, "done")
    return grid, final_grid, result


def cell_folder(settings: Settings, cell: Cell) -> Path:
    return settings.artifacts / settings.name / cell.backbone / cell.task / cell.method


def trial_key(r: Any, protocol: str) -> str:
    trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name.removeprefix("trial_")
    return f"{protocol}:{trial_id}"


def record_trial(engine: Any, cell_id: int, r: Any, protocol: str, mlflow_run_id: str | None = None) -> None:
    metrics = r.metrics or {}
    hyper = chosen_params(r.config, "seed")
    status = "failed" if r.error is not None else ("done" if metrics.get("epoch") == r.config["base"]["epochs"]
                                                   else "pruned")
    db.record_trial(engine, cell_id, trial_key(r, protocol), protocol=protocol, status=status, config=hyper,
                    seed=r.config.get("seed"), val_acc=metrics.get("val_acc"), test_acc=metrics.get("test_acc"),
                    epochs_done=int(metrics.get("epoch", 0)), node_id=metrics.get("node_id"),
                    mlflow_run_id=mlflow_run_id)


# ---- MLflow: after the database, and deferred when the tracking server is away -----------------

class PendingTracking:
    """Cells whose MLflow logging failed; ``sweep resume`` (any later run of the sweep) logs them."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.workdir / f"mlflow-pending-{settings.name}.json"

    def keys(self) -> list[str]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def _write(self, keys: list[str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(set(keys))))
        tmp.replace(self.path)

    def add(self, key: str) -> None:
        self._write(self.keys() + [key])

    def remove(self, key: str) -> None:
        keys = [k for k in self.keys() if k != key]
        if keys:
            self._write(keys)
        else:
            self.path.unlink(missing_ok=True)


def track_or_defer(pending: PendingTracking, settings: Settings, engine: Any, tracker: Tracker, cell: Cell,
                   cell_id: int, search: list, final: list, result: dict[str, Any], hooks: Hooks) -> None:
    try:
        track_cell(settings, engine, tracker, cell, cell_id, search, final, result)
        pending.remove(cell.key)
    except TrackingUnavailable as err:
        pending.add(cell.key)
        hooks.on_warning(f"MLflow logging of {cell.key} failed ({err}); the result is in the database and "
                         f"`alorectl sweep resume {settings.name}` will log it")


def replay_pending(pending: PendingTracking, preset: Preset, settings: Settings, engine: Any, tracker: Tracker,
                   hooks: Hooks) -> None:
    by_key = {c.key: c for c in cells(preset)}
    status = {(c.backbone, c.task, c.method): c for c in db.sweep_status(engine, settings.name).cells}
    for key in pending.keys():
        cell = by_key.get(key)
        found = status.get((cell.backbone, cell.task, cell.method)) if cell is not None else None
        if found is None or found.status != "done":
            continue  # not finished: the cell runs again and is logged then
        sweep_id = db.upsert_sweep(engine, settings.name)
        cell_id = db.upsert_cell(engine, sweep_id, cell.backbone, cell.task, cell.method)
        # Read back from Tune's storage; nothing is rerun.
        grids = [list(ResultGrid(tune.ExperimentAnalysis(str(settings.storage / f"{settings.name}__{key}__{phase}"))))
                 for phase in ("search", "final")]
        result = json.loads((cell_folder(settings, cell) / "result.json").read_text())
        track_or_defer(pending, settings, engine, tracker, cell, cell_id, grids[0], grids[1], result, hooks)


def track_cell(settings: Settings, engine: Any, tracker: Tracker, cell: Cell, cell_id: int, search: list,
               final: list, result: dict[str, Any]) -> None:
    """Parent run per cell, child run per trial, artifacts, the leaderboard experiment (all idempotent)."""
    experiment = tracker.experiment(f"alore/{settings.name}")
    tags = {"backbone": cell.backbone, "task": cell.task, "method": cell.method, "sweep": settings.name}
    parent = tracker.find_or_create_run(experiment, f"{settings.name}/{cell.key}", cell.key, tags)
    for protocol, grid in (("search", search), ("final", final)):
        for r in grid:
            key = trial_key(r, protocol)
            history = r.metrics_dataframe.to_dict("records") if r.metrics_dataframe is not None else []
            hyper = chosen_params(r.config, "seed")
            run = tracker.find_or_create_run(experiment, f"{cell.key}/{key}", key.replace(":", "-"),
                                             {**tags, "protocol": protocol}, parent=parent, history=history,
                                             params=hyper)
            tracker.finish(run, "FINISHED" if r.error is None else "FAILED")
            record_trial(engine, cell_id, r, protocol, mlflow_run_id=run)
    tracker.log(parent, params={"chosen": result["chosen"], "base": {k: v for k, v in result["config"].items()},
                                "seeds": result["seeds"]},
                metrics={"best_val_acc": result["val_acc"], "test_acc_mean": result["test_acc_mean"],
                         "test_acc_std": result["test_acc_std"], "trainable_params": result["trainable_params"]})
    tracker.artifacts(parent, cell_folder(settings, cell), "final")
    tracker.finish(parent)
    sweep_id = db.upsert_sweep(engine, settings.name)
    db.record_result(engine, sweep_id=sweep_id, mlflow_run_id=parent,
                     **{k: result[k] for k in ("backbone", "task", "method", "suite", "test_acc_mean", "seeds")})
    board = tracker.experiment(f"alore/leaderboard/{cell.backbone}")
    entry = tracker.find_or_create_run(board, f"{cell.backbone}/{cell.task}/{cell.method}",
                                       f"{cell.task}/{cell.method}", tags)
    tracker.log(entry, metrics={"test_acc": result["test_acc_mean"], "test_acc_std": result["test_acc_std"],
                                "val_acc": result["val_acc"], "params_m": result["trainable_params"] / 1e6},
                tags={"sweep": settings.name, "cell_run": parent})


def publish_leaderboards(preset: Preset, settings: Settings, engine: Any, tracker: Tracker) -> None:
    """The sweep's own run carries each backbone's leaderboard table as an artifact."""
    from .leaderboard_view import build

    experiment = tracker.experiment(f"alore/{settings.name}")
    run = tracker.find_or_create_run(experiment, f"{settings.name}/sweep", "sweep", {"sweep": settings.name})
    folder = settings.workdir / "leaderboards" / settings.name
    folder.mkdir(parents=True, exist_ok=True)
    for backbone in preset.backbones:
        board = build(engine, backbone, preset.suite)
        (folder / f"{backbone}.md").write_text(db.to_markdown(board))
    tracker.artifacts(run, folder, "leaderboard")
    tracker.finish(run)
