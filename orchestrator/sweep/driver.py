"""The sweep driver: plan → run → record → track.

    preset + flags ──plan──> SweepPlan (cells, trial specs)          alorectl.sweep.plan
                   ──run───> one Tune experiment, every cell at once  alorectl.sweep.experiment / searcher / trial
                   ──record> database rows, each written once         alorectl.sweep.record
                   ──track─> MLflow, mirroring what was recorded      alorectl.tracking.observer

Each cell (backbone × task × method) is searched on the ``search`` protocol
(train800 → val200), then its best configuration (chosen on val200 only) is
retrained on the ``final`` protocol (train800val200 → test) per seed. Test
images are never seen before the final runs. The driver is the one writer of
the database and of MLflow; a resumed sweep restores the Tune experiment (trials,
checkpoints, the searcher's state) and logs whatever MLflow is missing.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alorectl import db
from alore.data import DEMO_TASKS, task_info, write_demo_dataset
from alore.data.demo import MANIFEST as DEMO_MANIFEST
from alore.errors import AloreError, DataError
from alorectl.db.urls import mask_text, mask_url

from alorectl import defaults, security
from alorectl.bench import simulated as simulation
from . import experiment as run
from . import lock, preflight, replace
from . import plan as planning
from . import studies
from .preset import Preset
from .record import CellResult, Recorder, TrialOutcome
from .timing import PREPARING
from alorectl.tracking.observer import Background, Track
from alorectl.tracking.client import Tracker

LEADERBOARD_EVERY_S = 60.0  # the MLflow leaderboard is refreshed at most this often while a sweep runs


@dataclasses.dataclass
class Settings:
    """Where a sweep runs and writes; the embedded default needs none of the flags."""

    name: str
    workdir: Path
    tracking_uri: str
    db_url: str
    address: str | None = None
    max_concurrent: int | None = None
    warm_start_from: tuple[str, ...] = ()  # earlier sweeps whose best configurations each cell's search starts from

    @classmethod
    def embedded(cls, name: str, workdir: Path, tracking_uri: str | None = None, db_url: str | None = None,
                 address: str | None = None, max_concurrent: int | None = None,
                 warm_start_from: tuple[str, ...] = ()) -> Settings:
        security.check_name("sweep", name)
        workdir = workdir.resolve()
        return cls(name, workdir, defaults.tracking_uri(workdir, tracking_uri), defaults.db_url(workdir, db_url),
                   address, max_concurrent, tuple(warm_start_from))


@dataclasses.dataclass
class Hooks:
    """What the CLI shows while a sweep runs."""

    on_step: Callable[[str], None] = lambda message: None
    on_plan: Callable[[planning.SweepPlan], None] = lambda plan: None
    on_trial_start: Callable[[planning.TrialSpec], None] = lambda spec: None
    on_trial_done: Callable[[TrialOutcome], None] = lambda outcome: None
    on_cell_done: Callable[[planning.Cell, CellResult], None] = lambda cell, result: None
    on_warning: Callable[[str], None] = lambda message: None
    on_links: Callable[[dict[str, str]], None] = lambda experiments: None  # MLflow experiment name -> id


def resolve_inputs(preset: Preset, workdir: Path, fetch: bool = True,
                   on_slow_step: Callable[..., None] = lambda step, record=True: None,
                   ) -> tuple[Path, dict[str, str | None]]:
    """The data root and per-backbone weights, with ``{workdir}`` filled in; checked before anything runs.

    A backbone without weights gets its pretrained checkpoint (timm's tag), fetched once into
    ``<workdir>/weights`` or found in the local hub cache — never a silently random backbone. Random
    initialisation only when asked for by name (``random``); the small test backbones keep theirs.
    ``on_slow_step`` is told before each step that takes more than a moment (writing the demo, fetching).
    """
    from alore import backbones

    fill = lambda s: s.replace("{workdir}", str(workdir))  # noqa: E731
    root = Path(fill(preset.data_root)).expanduser().resolve()
    if not fetch:  # a plan only (--dry-run): nothing is read, fetched or written
        return root, {b: preset.weights.get(b) or (backbones.RANDOM if backbones.is_small_test(b) else
                                                   f"timm:{backbones.pretrained_tag(b)}") for b in preset.backbones}
    # The demo's own data, made in the work folder: made again where a first preparation was cut short (the
    # data and the demo backbone are each written atomically, and skipped when already complete).
    demo = (preset.data_root.startswith("{workdir}") and all(t in DEMO_TASKS for t in preset.tasks)
            and (not root.exists() or (root / DEMO_MANIFEST).is_file()))
    for b, given in preset.weights.items():  # before the demo writes anything: a file that is not there
        path = Path(fill(given)).expanduser()
        made_by_demo = demo and path.resolve() == (root.parent / "demo.safetensors").resolve()
        if given not in (backbones.RANDOM, "timm", "hub") and b in preset.backbones and not path.is_file() \
                and not made_by_demo:
            raise DataError(f"weights file for {b} not found: {path} (pass --weights {b}=FILE)")
    if demo:
        # The demo makes its own data (and demo backbone) in its work folder the first time.
        from alore.demo_backbone import write_demo_weights

        security.make_private(workdir)
        on_slow_step("writing the demo data")
        write_demo_dataset(root.parent)
        on_slow_step("pre-training the demo backbone (once per work folder, a few minutes on CPU)")
        write_demo_weights(root.parent)
    if not root.is_dir():
        raise DataError(f"data root not found: {root} (pass --data-root DIR)")
    for task in preset.tasks:
        task_info(preset.suite, task, root)
    weights: dict[str, str | None] = {}
    for b in preset.backbones:
        given = preset.weights.get(b)
        if given == backbones.RANDOM or (given is None and backbones.is_small_test(b)):
            weights[b] = backbones.RANDOM
        elif given in (None, "timm", "hub"):
            fresh = not workdir.exists()
            # Not recorded yet: a fetch that fails (offline, no cache) is refused with nothing written.
            on_slow_step(f"fetching the pretrained weights of {b}", False)
            weights[b] = str(backbones.fetch_pretrained(b, workdir / "weights"))
            if fresh:  # created by the fetch: owner-only like every work folder
                for folder in (workdir, workdir / "weights"):
                    folder.chmod(0o700)
        else:
            path = Path(fill(given)).expanduser()
            if not path.is_file():
                raise DataError(f"weights file for {b} not found: {path} (pass --weights {b}=FILE)")
            weights[b] = str(path.resolve())
    return root, weights


def make_plan(preset: Preset, settings: Settings, fetch: bool = True,
              on_slow_step: Callable[..., None] = lambda step, record=True: None) -> planning.SweepPlan:
    root, weights = resolve_inputs(preset, settings.workdir, fetch=fetch, on_slow_step=on_slow_step)
    return planning.build(preset, settings.name, root, weights)


class Driver:
    """Receives Tune's trial events (run layer) and passes each result to record, then track."""

    def __init__(self, plan: planning.SweepPlan, settings: Settings, recorder: Recorder, track: Track, engine: Any,
                 hooks: Hooks) -> None:
        self.plan, self.settings, self.recorder, self.track = plan, settings, recorder, track
        self.engine, self.hooks = engine, hooks
        self.starts: dict[str, datetime] = {}
        self.reports: dict[str, dict[int, dict[str, Any]]] = {}  # trial id -> epoch -> what it reported
        self.folders: dict[tuple[planning.Cell, str], Path] = {}  # (cell, trial key) -> Tune's folder
        self.results: list[CellResult] = []
        self.failed: dict[planning.Cell, str] = {}
        self.dirty: set[str] = set()
        self.board_at = time.monotonic()
        self.later = Background()  # MLflow calls: Tune's event loop (which calls us) must not wait on them
        self.cells = {cp.cell.key: cp.cell for cp in plan.cells}

    # ---- Tune events -------------------------------------------------------------------------------

    def started(self, trial: Any) -> None:
        spec = planning.TrialSpec.from_config(trial.config)
        now = datetime.now(UTC)
        self.starts.setdefault(trial.trial_id, now)
        self.recorder.trial_started(spec, now)
        if spec.phase == planning.FINAL and spec.index == 0:  # the cell's search has ended
            self.track.draw_soon(spec.cell)
        self.hooks.on_trial_start(spec)

    def result(self, trial: Any, result: dict[str, Any]) -> None:
        if "epoch" in result:  # a report carries every epoch since the previous one (sweep.cadence)
            self.reports.setdefault(trial.trial_id, {}).update((int(r["epoch"]), r) for r in run.expand(result))

    def ended(self, trial: Any, error: str | None) -> None:
        spec = planning.TrialSpec.from_config(trial.config)
        reports = self.reports.pop(trial.trial_id, {})
        if self.recorder.already_ended(spec) and not reports:
            return  # restored from a state older than the database: recorded (and logged) already
        # Tune's own folder for this trial: a trial lost in a driver kill and suggested again after the
        # restore gets a new folder (Tune suffixes the name), and only this one holds its checkpoints.
        self.folders[(spec.cell, spec.key)] = Path(trial.path)
        outcome = self.outcome(spec, dict(trial.last_result or {}), self.starts.pop(trial.trial_id, None), error,
                               reports=reports)
        self.finish(outcome, reports)

    def recorded(self, cell: str, key: str, phase: str) -> dict[str, Any] | None:
        """What the database holds for trial ``key`` of cell ``cell`` when it ended in an earlier run of this
        sweep (the searcher and the scheduler take it as run: :mod:`alorectl.sweep.searcher`,
        :class:`alorectl.sweep.experiment.SkipRecorded`), else None."""
        row = self.recorder.rows.get((self.cells[cell], key))
        if row is None or row.status not in ("done", "pruned"):
            return None
        if (row.val_acc if phase == planning.SEARCH else row.test_acc) is None:
            return None
        return {"status": row.status, "params": dict(row.config or {}), "value": row.val_acc,
                "epochs": int(row.epochs_done or 0)}

    # ---- one trial's result, everywhere it goes ----------------------------------------------------

    def folder(self, spec: planning.TrialSpec) -> Path:
        return self.folders.get((spec.cell, spec.key)) or run.trial_dir(self.settings.workdir, spec, self.plan.name)

    def history(self, spec: planning.TrialSpec, reports: dict[int, dict[str, Any]] | None = None) -> list[dict]:
        """Every epoch the trial reported: Tune's storage (epochs before a restart) updated with what this
        driver saw itself (the storage copy can lag behind the last report)."""
        rows = {int(r["epoch"]): r for r in run.history(self.folder(spec))}
        rows.update(reports or {})
        return [rows[e] for e in sorted(rows)]

    def outcome(self, spec: planning.TrialSpec, last: dict[str, Any], started: datetime | None,
                error: str | None, finished: datetime | None = None,
                reports: dict[int, dict[str, Any]] | None = None) -> TrialOutcome:
        folder = self.folder(spec)
        rows = self.history(spec, reports)
        if rows and int(rows[-1].get("epoch", 0)) >= int(last.get("epoch", 0)):
            last = {**last, **rows[-1]}  # Tune's storage may be a report ahead of the driver's view
        epochs = int(last.get("epoch", 0))
        status = "failed" if error else ("done" if epochs >= spec.run.epochs else "pruned")
        if spec.phase == planning.FINAL and status == "done" and last.get("test_acc") is None:
            status, error = "failed", "the final run reported no test accuracy"
        now = finished or datetime.now(UTC)
        return TrialOutcome(spec, status, last, started or now, now, run.latest_checkpoint(folder), error)

    def finish(self, outcome: TrialOutcome, reports: dict[int, dict[str, Any]] | None = None) -> None:
        spec = outcome.spec
        self.recorder.trial_finished(outcome)
        self.later.put(lambda: self.log_trial(outcome, reports))
        self.discard_checkpoints(spec, outcome.status)
        self.hooks.on_trial_done(outcome)
        cp = self.plan.cell(spec.cell)
        if spec.phase == planning.SEARCH and self.recorder.search_failed(cp):
            self.fail(spec.cell, f"every search trial failed ({outcome.error or 'no val accuracy'})")
        elif spec.phase == planning.FINAL and outcome.status == "failed":
            self.recorder.cell_failed(spec.cell)
            self.fail(spec.cell, f"final run with seed {spec.seed} failed ({outcome.error})")
        elif spec.phase == planning.FINAL:
            result = self.recorder.cell_result(spec.cell)
            if result is not None:
                self.results.append(result)
                self.hooks.on_cell_done(spec.cell, result)
                self.later.put(lambda: self.log_cell(result))
                self.dirty.add(spec.cell.backbone)
                if time.monotonic() - self.board_at > LEADERBOARD_EVERY_S:
                    self.board_at = time.monotonic()
                    self.later.put(self.publish)

    def discard_checkpoints(self, spec: planning.TrialSpec, status: str) -> None:
        """A trial that ended and is recorded is never resumed: its checkpoints (ViT-H's are up to 17 MB each,
        Tune keeps 2-4 per trial, the paper's sweep runs 5,814 trials) are removed, except a final trial's last,
        which holds its run's files. A failed trial keeps them (it is resumed)."""
        if status in ("done", "pruned"):
            folder, last = self.folder(spec), spec.phase == planning.FINAL
            self.later.put(lambda: run.discard_checkpoints(folder, keep_last=last))

    def fail(self, cell: planning.Cell, why: str) -> None:
        self.failed[cell] = why
        self.hooks.on_warning(f"{cell.backbone}/{cell.task}/{cell.method}: {why}")

    def log_trial(self, outcome: TrialOutcome, reports: dict[int, dict[str, Any]] | None = None) -> None:
        run_id = self.track.trial(outcome, self.history(outcome.spec, reports))
        if run_id:
            self.recorder.trial_tracked(outcome.spec, run_id)

    def log_cell(self, result: CellResult) -> None:
        if not self.track.pictures_ready(result.cell):  # the trials' runs are logged while they are drawn
            self.later.again(lambda: self.log_cell(result))
            return
        run_id = self.track.cell(result)
        if run_id:
            self.recorder.result_tracked(result.cell, run_id)

    def publish(self) -> None:
        for backbone in sorted(self.dirty):
            if self.track.leaderboard(self.engine, backbone, self.plan.cells[0].run.suite):
                self.dirty.discard(backbone)
        self.board_at = time.monotonic()

    # ---- after a restart ---------------------------------------------------------------------------

    def catch_up(self, before_trials: bool = False) -> int:
        """Finals that ended before a restart count for their cell (at once: the searcher and the scheduler read
        them); what MLflow is missing is queued for the tracking thread, so that a restored sweep's trials do
        not wait for it (issue 16: restore time). ``before_trials``: Tune is about to resume the failed trials,
        which log themselves when they end. The number of runs queued."""
        self.recorder.reload()
        discard, log = [], []
        for row in list(self.recorder.rows.values()):
            cell = planning.Cell(row.backbone, row.task, row.method)
            spec = planning.recorded_spec(self.plan, cell, row.trial_key, row.seed, row.config)
            if spec is None or row.status == "running":
                continue
            counts = spec.phase == planning.FINAL and row.status == "done" and cell not in self.recorder.done
            unlogged = not row.mlflow_run_id and not (before_trials and row.status == "failed")
            if counts or unlogged:  # only these need the trial's reports and checkpoint read
                outcome = self.outcome(spec, {"val_acc": row.val_acc, "test_acc": row.test_acc,
                                              "epoch": row.epochs_done}, row.started_at, None, row.finished_at)
                outcome = dataclasses.replace(outcome, status=row.status)
                if counts:
                    self.recorder.recorded_final(outcome)
                if unlogged:
                    log.append(functools.partial(self.log_trial, outcome))
            discard.append((spec, row.status))
        for spec, status in discard:  # in case a kill came before it was done; ahead of the logging
            self.discard_checkpoints(spec, status)
        for cp in self.plan.cells:  # every seed ended before the restart, the result was not recorded yet
            result = self.recorder.cell_result(cp.cell)
            if result is not None:
                self.results.append(result)
                self.hooks.on_cell_done(cp.cell, result)
        for r in db.results_of(self.engine, self.plan.name):
            if r["mlflow_run_id"]:
                continue
            cell = planning.Cell(r["backbone"], r["task"], r["method"])
            try:
                self.plan.cell(cell)
            except KeyError:
                continue
            chosen = planning.searched_params(r["config"] or {})
            log.append(functools.partial(self.log_cell, CellResult(
                cell, r["suite"], r["test_acc_mean"], r["test_acc_std"] or 0.0, {}, r["val_acc"],
                r["trainable_params"] or 0, chosen, r["config"] or {}, tuple(r["seeds"] or ()), r["epochs"] or 0,
                Path(r["artifact_uri"]) if r["artifact_uri"] else None)))
            self.dirty.add(cell.backbone)
        for job in log:
            self.later.put(job)
        return len(log)


def run_sweep(preset: Preset, settings: Settings, hooks: Hooks | None = None, *,
              resume: bool = False, force_new: bool = False) -> list[CellResult]:
    """Run (or, with ``resume`` or a name already recorded, continue) the sweep; the cells' results.
    ``force_new``: a sweep recorded under this name is replaced (:func:`replace.replace_sweep`)."""
    hooks = hooks or Hooks()
    preflight.check_request(preset, settings.address, settings.tracking_uri, settings.db_url)  # before any file
    hooks.on_step("checking data and weights")
    preparing: dict[str, Any] = {}

    def slow_step(step: str, record: bool = True) -> None:
        # The inputs checked out (nothing is written before that): `sweep status` sees the sweep from now on.
        if record and not preparing and settings.db_url.startswith("sqlite"):
            security.make_private(settings.workdir)
        if record and not preparing:
            preparing["engine"] = db.connect(settings.db_url)
            # A sweep already recorded keeps its row as it is: only the inputs a run used are ever recorded.
            if settings.name not in db.sweep_names(preparing["engine"]):
                preparing["id"] = db.upsert_sweep(preparing["engine"], settings.name, preset=preset.name,
                                                  suite=preset.suite,
                                                  config={**preset.to_dict(), PREPARING: "preparing data and weights"})
        hooks.on_step(step)

    try:
        plan = make_plan(preset, settings, on_slow_step=slow_step)
    except BaseException:
        if preparing.get("id") is not None:
            db.set_sweep_status(preparing["engine"], preparing["id"], "interrupted")
        raise
    finally:
        if preparing:
            preparing["engine"].dispose()
    simulated = simulation.table() is not None  # alorectl bench scale: simulated trial bodies read no files
    if not simulated:
        preflight.check_inputs(plan)  # the files themselves: before Ray starts, before anything is written
    hooks.on_plan(plan)
    if settings.address:
        run.check_address(settings.address)  # seconds, and before anything is written
        preflight.check_speaks_ray(settings.address)  # a port that answers but is not Ray: no hang
    if settings.db_url.startswith("sqlite") and not settings.workdir.exists():
        security.make_private(settings.workdir)  # owner-only from the start: the embedded database lives in it
    engine = db.connect(settings.db_url)
    try:
        recorded = settings.name in db.sweep_names(engine)
        if recorded and bool(db.sweep_config(engine, settings.name).get("simulated")) != simulated:
            raise AloreError(f"sweep {settings.name!r} is " + ("simulated: only alorectl bench scale continues it"
                             if not simulated else "a real sweep: a simulation cannot continue it"))
        if recorded and not force_new:  # the same plan continues; other inputs under this name are refused
            preflight.check_same_plan(settings.name, db.sweep_config(engine, settings.name), preset)
    except BaseException:
        engine.dispose()  # a refusal leaves no SQLite -wal/-shm files behind
        raise
    security.make_private(settings.workdir)
    with lock.hold(settings.workdir, settings.name):  # one driver per name: refused at once while one runs
        if force_new:  # its rows and its Tune folder (also one left without rows)
            replace.replace_sweep(engine, settings.workdir, settings.name)
            recorded = False
        return _run_locked(preset, settings, hooks, plan, engine, resume, recorded, simulated)


def _run_locked(preset: Preset, settings: Settings, hooks: Hooks, plan: planning.SweepPlan, engine: Any,
                resume: bool, recorded: bool, simulated: bool) -> list[CellResult]:
    run.check_experiment(settings.workdir, settings.name, restore=resume or recorded)
    if settings.address:  # a cluster's nodes are known once connected: none fits a trial -> one line, no row
        hooks.on_step(f"connecting to the Ray cluster {settings.address}")
        run.start_ray(settings.address, settings.workdir / "logs")
        busy = preflight.check_cluster(preset.cpus_per_trial, preset.gpus_per_trial)
        if busy:
            hooks.on_warning(busy)
    sweep_config = {**preset.to_dict(), "tracking_uri": mask_text(settings.tracking_uri),
                    "db": mask_url(settings.db_url), "warm_start_from": list(settings.warm_start_from),
                    "weights_used": {b: _shown(w) for b, w in _weights(plan).items()},
                    "total_trials": plan.total_trials, "planned": {cp.cell.key: cp.n_trials for cp in plan.cells},
                    PREPARING: "starting Ray", **({"simulated": True} if simulated else {})}
    sweep_id = db.upsert_sweep(engine, settings.name, preset=preset.name, suite=preset.suite, config=sweep_config,
                               status="running", simulated=simulated)
    hooks.on_step("starting Ray" + (f" (cluster {settings.address})" if settings.address else " (local)"))
    run.start_ray(settings.address, settings.workdir / "logs")
    slots = run.slots(preset.cpus_per_trial, preset.gpus_per_trial)
    slots = min(slots, settings.max_concurrent) if settings.max_concurrent else slots
    sweep_config.pop(PREPARING)
    db.upsert_sweep(engine, settings.name, config={**sweep_config, "slots": slots})
    recorder = Recorder(engine, sweep_id, plan)
    track = Track(Tracker(settings.tracking_uri, settings.workdir / "mlartifacts", unsynced_store=True), plan,
                  hooks.on_warning,
                  simulated=simulated, workdir=settings.workdir)
    driver = Driver(plan, settings, recorder, track, engine, hooks)
    try:
        queued = driver.catch_up(before_trials=len(recorder.done) < len(plan.cells))
        more = len(recorder.done) < len(plan.cells)
        if queued:
            hooks.on_step(f"logging to MLflow {queued} runs that a previous run left unlogged"
                          + (", beside the trials" if more else ""))
        if more:
            tuner = run.tuner(plan, settings.workdir, cpus_per_trial=preset.cpus_per_trial,
                              gpus_per_trial=preset.gpus_per_trial, epochs=preset.epochs,
                              max_concurrent=settings.max_concurrent, restore=resume or recorded)
            hooks.on_step(f"running {plan.total_trials} trials of {len(plan.cells)} cells")
            journal = studies.open_journal(settings.workdir)  # the searcher's Optuna storage
            studies.use(plan.name, journal, studies.warm_starts(journal, plan, settings.warm_start_from,
                                                                hooks.on_warning))
            try:
                run.fit(tuner, driver)
            finally:
                studies.use(plan.name, None)
        driver.later.drain()
        if driver.catch_up():  # what MLflow could not take during the run, if it is back
            hooks.on_step("logging to MLflow what it could not take during the run")
        driver.later.drain()
        track.register_best(engine)  # before the last publish: the leaderboard links the registered versions
        driver.dirty |= {cp.cell.backbone for cp in plan.cells}
        driver.publish()
    except BaseException:
        db.set_sweep_status(engine, sweep_id, "interrupted")
        raise
    finally:
        driver.later.close()
        track.close()
    hooks.on_links(dict(track.links))
    missing = [cp.cell for cp in plan.cells if cp.cell not in recorder.done]
    db.set_sweep_status(engine, sweep_id, "failed" if missing else "done")
    if missing:
        first = missing[0]
        why = driver.failed.get(first, "did not finish")
        raise AloreError(f"{len(missing)} of {len(plan.cells)} cells failed, first {first.backbone}/{first.task}/"
                         f"{first.method}: {why}; the others are recorded (alorectl sweep status {settings.name})")
    return driver.results


def _weights(plan: planning.SweepPlan) -> dict[str, str | None]:
    return {cp.cell.backbone: cp.run.weights for cp in plan.cells}


def _shown(weights: str | None) -> str:
    return weights or "random"
