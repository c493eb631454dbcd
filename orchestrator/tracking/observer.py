"""Track: MLflow as an observer of recorded results.

Every result reaches the database first (:mod:`alorectl.sweep.record`); this
layer then mirrors it into MLflow. What is not yet in MLflow is exactly what the
database holds without an MLflow run id, so the pending queue *is* the database:
a tracking server that went away, or a driver killed mid-logging, leaves rows
without ids, and the next run of the sweep (``sweep resume``) logs them. A run
is complete only once its ``alore.complete`` tag is set, last; a trial run found
without it is deleted and logged again whole, a cell's run is filled in place.

Layout (same metric names at every level: ``val_acc``, ``test_acc``, ``params_m``):

* ``alore/<sweep>``: a run per cell (``ssf · digits_rot``) with its trials as
  children (``search 3 · lr=0.01 wd=0.001 do=0.1``, ``final · seed 42``), each with
  the trial's real start and end time, parameters and per-epoch metrics; the
  cell run holds the chosen configuration, the result and the final files.
* ``alore/leaderboard · <backbone>``: the paper's table 2 — one run per method, a
  metric per task, the group means, ``all_mean`` and ``params_m``, the chosen
  configuration per task as parameters, the table itself as an artifact, links to
  the cell runs and weights (:mod:`alorectl.tracking.board`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from alorectl import db, scratch

from alorectl.sweep.plan import SHORT, Cell, SweepPlan
from alorectl.sweep.record import CellResult, TrialOutcome
from .client import Tracker, TrackingUnavailable
from .links import VIEW_ID, experiment_fragment

RETRY_AFTER_S = 60.0  # after a failure, calls are skipped (left pending) for this long
AGAIN_S = 0.1         # how long a job that waits (Background.again) lets an otherwise idle thread sleep


def experiment_name(sweep: str) -> str:
    return f"alore/{sweep}"


def leaderboard_name(backbone: str, simulated: bool = False) -> str:
    """The MLflow leaderboard of real results; simulated sweeps (alorectl bench scale) have their own.

    MLflow's breadcrumb shows a name's last ``/`` part: ``alore/leaderboard · demo`` reads apart from the sweep
    ``alore/demo`` (the names before were ``alore/leaderboard/demo``: :func:`former_leaderboard_name`)."""
    return f"alore/simulated leaderboard · {backbone}" if simulated else f"alore/leaderboard · {backbone}"


def former_leaderboard_name(backbone: str, simulated: bool = False) -> str:
    """The leaderboard's name in stores written before :func:`leaderboard_name` (renamed on the next write)."""
    return f"alore/simulated/leaderboard/{backbone}" if simulated else f"alore/leaderboard/{backbone}"


SIMULATED_TAG = "alore.simulated"  # on every run of a simulated sweep (alorectl bench scale)


def _ms(t: datetime | None) -> int | None:
    return int(t.timestamp() * 1000) if t else None


def compact(params: dict[str, Any]) -> str:
    return " ".join(f"{SHORT.get(k, k)}={v}" for k, v in params.items())


class Background:
    """One thread that runs MLflow calls in order, off the caller's thread."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="alore-track", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except BaseException as err:  # a bug, not an outage (Track turns those into warnings)
                self.error = self.error or err
            finally:
                self.jobs.task_done()
        self.jobs.task_done()

    def put(self, job: Callable[[], Any]) -> None:
        self.jobs.put(job)

    def again(self, job: Callable[[], Any]) -> None:
        """Put ``job`` back behind what is queued (called by a job that waits for something); with nothing
        else queued, after a short wait, so that the thread does not spin."""
        if self.jobs.empty():
            time.sleep(AGAIN_S)
        self.jobs.put(job)

    def drain(self) -> None:
        """Wait for every queued call; re-raise the first bug one of them hit."""
        self.jobs.join()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=60)


class Track:
    def __init__(self, tracker: Tracker, plan: SweepPlan, warn: Callable[[str], None],
                 simulated: bool = False, workdir: Path | None = None) -> None:
        self.tracker, self.plan, self.warn, self.simulated = tracker, plan, warn, simulated
        self.marks = {SIMULATED_TAG: "1"} if simulated else {}
        self.workdir = workdir  # where the sweep's Optuna studies are (pictures of each cell's search)
        self.drawer: Any = None  # draws them in a process of its own (results.pictures.Drawer), once needed
        self.drawer_lock = threading.Lock()
        self.drawings: dict[Cell, Any] = {}  # cells whose pictures are being drawn (draw_soon)
        self.several_backbones = len({cp.cell.backbone for cp in plan.cells}) > 1
        self.down_until = 0.0
        self._experiment: str | None = None
        self._index: dict[str, tuple[str, bool]] | None = None  # the sweep experiment's runs (see _runs)
        self.links: dict[str, str] = {}  # experiment name -> id, for the deep links printed at the end

    # ---- guarded entry points: never raise, return None when MLflow is away ------------------------

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        if time.monotonic() < self.down_until:
            return None
        try:
            return fn()
        except TrackingUnavailable as err:
            self.down_until = time.monotonic() + RETRY_AFTER_S
            self._index = None  # a call may have half-succeeded: read MLflow's runs again when it is back
            self.warn(f"MLflow logging of {what} failed ({err}); the result is in the database and "
                      f"`alorectl sweep resume {self.plan.name}` will log it")
            return None

    def trial(self, outcome: TrialOutcome, history: list[dict[str, Any]]) -> str | None:
        """Log one finished trial as a child of its cell's run; its run id, or None if left pending."""
        return self._guard(f"{outcome.spec.cell.key}/{outcome.spec.key}", lambda: self._trial(outcome, history))

    def cell(self, result: CellResult) -> str | None:
        """Complete the cell's run (result, chosen config, final files); its run id, or None if left pending."""
        return self._guard(result.cell.key, lambda: self._cell(result))

    def register_best(self, engine: Any) -> list[Any] | None:
        """The sweep's best method per (backbone, task) by val200 in MLflow's registry (alias ``best``)."""
        if self.simulated:  # stand-in weights are never registered as models
            return None
        rows = [{**r, "sweep": self.plan.name} for r in db.results_of(engine, self.plan.name)]
        return self._guard("the model registry", lambda: self.tracker.register_best(rows))

    def leaderboard(self, engine: Any, backbone: str, suite: str) -> bool:
        done = self._guard(f"the {backbone} leaderboard", lambda: self._leaderboard(engine, backbone, suite))
        return done is not None

    # ---- the work ----------------------------------------------------------------------------------

    def experiment(self) -> str:
        if self._experiment is None:
            self._experiment = self.tracker.experiment(experiment_name(self.plan.name))
            runs_table = experiment_fragment(self._experiment, view=VIEW_ID)  # whatever page MLflow opens on
            self.tracker.describe(self._experiment, ("SIMULATED (alorectl bench scale): synthetic accuracies, "
                                                     "stand-in weights. " if self.simulated else "") + (
                f"**[Open the runs table]({runs_table})** · Sweep {self.plan.name}: a run per cell (method · task), "
                f"its search and final trials nested under it. Same numbers on the command line: "
                f"alorectl sweep status {self.plan.name}"),
                metrics=["val_acc", "test_acc", "params_m"], params=["lr", "weight_decay", "dropout", "seed"])
            self.links[experiment_name(self.plan.name)] = self._experiment
        return self._experiment

    def _runs(self) -> dict[str, tuple[str, bool]]:
        """The sweep experiment's runs by ``alore.key`` -> (run id, complete), read from MLflow once (and again
        after an outage) and kept up to date here: this driver is the experiment's one writer (the sweep
        lock), so a trial costs no search of a table that grows to thousands of runs."""
        if self._index is None:
            self._index = self.tracker.runs_by_key(self.experiment())
        return self._index

    def parent(self, cell: Cell, start_time: int | None = None) -> str:
        key = f"{self.plan.name}/{cell.key}"
        found = self._runs().get(key)  # complete or not: a cell's run is filled in place
        if found is None:
            name = cell.label + (f" · {cell.backbone}" if self.several_backbones else "")
            tags = {"backbone": cell.backbone, "task": cell.task, "method": cell.method, "sweep": self.plan.name,
                    **self.marks}
            found = (self.tracker.create_run(self.experiment(), key, name, tags, start_time=start_time), False)
            self._runs()[key] = found
        return found[0]

    def _trial(self, outcome: TrialOutcome, history: list[dict[str, Any]]) -> str:
        spec = outcome.spec
        parent = self.parent(spec.cell, _ms(outcome.started_at))
        tags = {"backbone": spec.cell.backbone, "task": spec.cell.task, "method": spec.cell.method,
                "sweep": self.plan.name, "protocol": spec.phase, **self.marks}
        key = f"{spec.cell.key}/{spec.key}"
        found = self._runs().get(key)
        if found is not None and found[1]:  # logged completely before (a replay after the database missed the id)
            return found[0]
        if found is not None:  # cut short (the driver died, or MLflow went away, while logging it): redone whole
            self.tracker.delete_run(found[0])
            del self._runs()[key]
        run = self.tracker.create_run(self.experiment(), key, spec.run_name, tags, parent=parent,
                                      start_time=_ms(outcome.started_at))
        self._runs()[key] = (run, False)
        m = outcome.metrics
        # val_acc/test_acc come per epoch with the history; the summary adds what the history lacks.
        logged = {k for row in history for k in row}
        metrics = {k: m[k] for k in ("val_acc", "test_acc") if m.get(k) is not None and k not in logged}
        if m.get("trainable_params") is not None:
            metrics["params_m"] = m["trainable_params"] / 1e6
        self.tracker.log(run, params={**spec.params, "seed": spec.seed, "protocol": spec.phase,
                                      "epochs": spec.run.epochs, "weights": spec.run.weights or "random"},
                         metrics=metrics, history=history, step=int(m.get("epoch", 0)), fresh=True,
                         tags={"error": outcome.error[:500]} if outcome.error else None,
                         complete="FAILED" if outcome.status == "failed" else "FINISHED",
                         end_time=_ms(outcome.finished_at))
        self._runs()[key] = (run, True)
        return run

    def _cell(self, r: CellResult) -> str:
        parent = self.parent(r.cell)
        self.tracker.log(parent, params={**r.chosen, "weights": r.config.get("weights") or "random",
                                         "seeds": ",".join(map(str, r.seeds)), "epochs": r.epochs},
                         metrics={"val_acc": r.val_acc, "test_acc": r.test_acc_mean, "test_acc_std": r.test_acc_std,
                                  "params_m": r.trainable_params / 1e6})
        if r.artifact_dir is not None and Path(r.artifact_dir).is_dir():
            self.tracker.artifacts(parent, Path(r.artifact_dir), "final")
        if r.artifact_dir is not None and Path(r.artifact_dir).is_dir() and not self.simulated:
            # A simulated final run's merged file is a stand-in: there is no model to log.
            self.tracker.model(parent, r.cell.backbone, r.suite, Path(r.artifact_dir),
                               {**r.cell.as_dict(), "sweep": self.plan.name, "val_acc": r.val_acc,
                                "test_acc": r.test_acc_mean, "suite": r.suite})
        self._pictures(parent, r.cell)
        self.tracker.complete(parent)
        return parent

    def draw_soon(self, cell: Cell) -> None:
        """Start drawing the pictures of ``cell``'s search, which has just ended (its first final run started;
        called from Tune's loop): drawn while the final runs train, they are ready when the cell's result is
        logged (:meth:`_pictures`). Never raises: a drawing not started here is drawn then."""
        if self.workdir is None or cell in self.drawings:
            return
        try:
            out = scratch.make("search")
        except OSError:
            return
        try:
            self.drawings[cell] = self._drawer().start(self.workdir, self.plan.name, cell.backbone, cell.task,
                                                       cell.method, out)
        except Exception:  # the drawing process could not take it
            scratch.remove(out)

    def pictures_ready(self, cell: Cell) -> bool:
        """False while ``cell``'s pictures, started by :meth:`draw_soon`, are still being drawn."""
        drawing = self.drawings.get(cell)
        return drawing is None or drawing.future.done()

    def _drawer(self) -> Any:
        with self.drawer_lock:
            if self.drawer is None:
                from alorectl.results.pictures import Drawer

                self.drawer = Drawer()
            return self.drawer

    def _pictures(self, run_id: str, cell: Cell) -> None:
        """Parameter importance and parallel coordinates of the cell's search (its Optuna study) under ``search/``;
        a cell with fewer than 3 complete search trials has none. Drawing never fails the sweep: a warning."""
        if self.workdir is None:
            return
        from concurrent.futures.process import BrokenProcessPool

        early = self.drawings.pop(cell, None)
        out = early.out if early is not None else scratch.make("search")
        draw = lambda: self._drawer().draw(self.workdir, self.plan.name, cell.backbone, cell.task,  # noqa: E731
                                           cell.method, out)
        try:
            try:
                try:
                    files = self._drawer().wait(early) if early is not None else draw()
                except BrokenProcessPool:
                    if early is None:
                        raise
                    files = draw()  # started before the drawing process was lost: once more, in a new one
            except Exception as err:  # a study or a picture that could not be drawn
                self.warn(f"pictures of {cell.key}'s search not drawn ({type(err).__name__}: {err})")
                return
            if files:
                self.tracker.artifacts(run_id, out, "search")
        finally:
            scratch.remove(out)

    def close(self) -> None:
        """Stop the drawing process, if one was started; drop drawings nobody waited for (cells that failed)."""
        if self.drawer is not None:
            self.drawer.close()
        for drawing in self.drawings.values():
            scratch.remove(drawing.out)
        self.drawings.clear()

    def _leaderboard(self, engine: Any, backbone: str, suite: str) -> bool:
        """One run per method, updated in place as results arrive: the runs table is the paper's table 2
        (what MLflow shows of it: :mod:`alorectl.tracking.board`)."""
        from alorectl.results.leaderboard import build

        from .board import publish

        board = build(engine, backbone, suite, self.simulated)
        name = leaderboard_name(backbone, self.simulated)
        experiment = self.tracker.experiment(name, former=former_leaderboard_name(backbone, self.simulated))
        self.links[name] = experiment
        publish(self.tracker, board, experiment, suite, marks=self.marks, sweep=self.plan.name,
                simulated=self.simulated)
        return True
