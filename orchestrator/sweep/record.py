"""Record: the database, through ``db``'s public functions only; each row written once per event.

The driver is the database's one writer. A trial row is written when the trial
starts (``running``, ``started_at``) and when it ends (status, accuracies,
``finished_at``); a cell's choice when its final runs start; a cell's result
once all its seeds are in. A resumed sweep is seeded from what is already
recorded, so nothing is written twice and start times survive a restart.
"""

from __future__ import annotations

import dataclasses
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

from alorectl import db

from .plan import FINAL, SEARCH, Cell, CellPlan, SweepPlan, TrialSpec


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """How one trial ended, as the run layer saw it."""

    spec: TrialSpec
    status: str                      # done | pruned | failed
    metrics: dict[str, Any]          # the last report
    started_at: datetime
    finished_at: datetime
    checkpoint: Path | None          # the trial's last checkpoint (final trials: the run's files)
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class CellResult:
    """A cell's final score over its seeds, and what reproduces it."""

    cell: Cell
    suite: str
    test_acc_mean: float
    test_acc_std: float
    test_accs: dict[int, float]
    val_acc: float | None
    trainable_params: int
    chosen: dict[str, Any]
    config: dict[str, Any]
    seeds: tuple[int, ...]
    epochs: int
    artifact_dir: Path | None


class Recorder:
    def __init__(self, engine: Any, sweep_id: int, plan: SweepPlan) -> None:
        self.engine, self.sweep_id, self.plan = engine, sweep_id, plan
        self.cell_ids = {cp.cell: db.upsert_cell(engine, sweep_id, *dataclasses.astuple(cp.cell)) for cp in plan.cells}
        self.rows: dict[tuple[Cell, str], Any] = {}
        # How each trial ended so far, (status, val_acc); a resumed sweep starts from what was recorded.
        self.ended: dict[tuple[Cell, str], tuple[str, float | None]] = {}
        self.searched: dict[Cell, dict[str, tuple[str, float | None]]] = {}  # the same, search trials by cell
        self.reload()
        self.finals: dict[Cell, dict[int, TrialOutcome]] = {}
        cells = {Cell(c.backbone, c.task, c.method): c for c in db.sweep_status(engine, plan.name).cells}
        self.done = {cell for cell, c in cells.items() if c.status == "done"}
        self.chosen_val = {cell: c.best_val_acc for cell, c in cells.items()}

    def reload(self) -> None:
        """The sweep's trial rows as the database has them now."""
        self.rows = {(Cell(r.backbone, r.task, r.method), r.trial_key): r
                     for r in db.sweep_trials(self.engine, self.plan.name)}
        for key, r in self.rows.items():
            if r.status != "running":
                self._ended(*key, (r.status, r.val_acc))

    def recorded_final(self, outcome: TrialOutcome) -> None:
        """A final run that ended before a restart counts towards its cell's result."""
        self.finals.setdefault(outcome.spec.cell, {})[outcome.spec.seed] = outcome

    def already_ended(self, spec: TrialSpec) -> bool:
        """Recorded as ended before this run: Tune's restored state can lag a few seconds behind the
        database and start such a trial again from its last checkpoint (it has nothing left to train)."""
        status = self.ended.get((spec.cell, spec.key), (None, None))[0]
        return status in ("done", "pruned") or spec.cell in self.done

    def trial_started(self, spec: TrialSpec, started_at: datetime) -> None:
        if self.already_ended(spec):
            return
        cell_id = self.cell_ids[spec.cell]
        known = self.rows.get((spec.cell, spec.key))
        first = known.started_at if known is not None and known.started_at else started_at
        db.record_trial(self.engine, cell_id, spec.key, protocol=spec.phase, status="running", seed=spec.seed,
                        config=spec.params, started_at=first)
        if spec.phase == FINAL and spec.index == 0:
            db.set_cell_status(self.engine, cell_id, "running", best_config=spec.params,
                               best_val_acc=spec.chosen_val_acc, seeds=self.plan.cell(spec.cell).seeds,
                               epochs=spec.run.epochs)
        else:
            db.set_cell_status(self.engine, cell_id, "running")

    def trial_finished(self, outcome: TrialOutcome) -> None:
        spec, m = outcome.spec, outcome.metrics
        db.record_trial(self.engine, self.cell_ids[spec.cell], spec.key, protocol=spec.phase, status=outcome.status,
                        seed=spec.seed, config=spec.params, val_acc=m.get("val_acc"), test_acc=m.get("test_acc"),
                        epochs_done=int(m.get("epoch", 0)), node_id=m.get("node_id"),
                        started_at=outcome.started_at, finished_at=outcome.finished_at)
        self._ended(spec.cell, spec.key, (outcome.status, m.get("val_acc")))
        if spec.phase == FINAL and outcome.status == "done":
            self.finals.setdefault(spec.cell, {})[spec.seed] = outcome
        if spec.phase == FINAL and spec.index == 0:
            self.chosen_val[spec.cell] = spec.chosen_val_acc

    def trial_tracked(self, spec: TrialSpec, run_id: str) -> None:
        db.record_trial(self.engine, self.cell_ids[spec.cell], spec.key, protocol=spec.phase, mlflow_run_id=run_id)

    def result_tracked(self, cell: Cell, run_id: str) -> None:
        db.set_result_run(self.engine, self.sweep_id, cell.backbone, cell.task, cell.method, run_id)

    def _ended(self, cell: Cell, key: str, value: tuple[str, float | None]) -> None:
        self.ended[(cell, key)] = value
        if key.startswith(SEARCH):
            self.searched.setdefault(cell, {})[key] = value

    def search_failed(self, cp: CellPlan) -> bool:
        """True (and the cell marked failed) when every search trial of the cell ended without a val score."""
        ended = list(self.searched.get(cp.cell, {}).values())
        if len(ended) < cp.n_search or any(status != "failed" and val is not None for status, val in ended):
            return False
        db.set_cell_status(self.engine, self.cell_ids[cp.cell], "failed")
        return True

    def cell_failed(self, cell: Cell) -> None:
        db.set_cell_status(self.engine, self.cell_ids[cell], "failed")

    def cell_result(self, cell: Cell) -> CellResult | None:
        """The cell's result once every seed has a final run (recorded once); None before."""
        cp = self.plan.cell(cell)
        finals = self.finals.get(cell, {})
        if cell in self.done or set(finals) != set(cp.seeds):
            return None
        ordered = [finals[s] for s in cp.seeds]
        accs = {o.spec.seed: float(o.metrics["test_acc"]) for o in ordered}
        first = ordered[0]
        result = CellResult(
            cell=cell, suite=cp.run.suite, test_acc_mean=statistics.fmean(accs.values()),
            test_acc_std=statistics.pstdev(accs.values()) if len(accs) > 1 else 0.0, test_accs=accs,
            val_acc=first.spec.chosen_val_acc if first.spec.chosen_val_acc is not None else self.chosen_val.get(cell),
            trainable_params=int(first.metrics.get("trainable_params", 0)),
            chosen=dict(first.spec.params), config={**dataclasses.asdict(cp.run), **first.spec.params},
            seeds=cp.seeds, epochs=cp.run.epochs, artifact_dir=first.checkpoint)
        db.record_result(self.engine, sweep_id=self.sweep_id, backbone=cell.backbone, task=cell.task,
                         method=cell.method, suite=result.suite, test_acc_mean=result.test_acc_mean,
                         test_acc_std=result.test_acc_std, seeds=list(result.seeds), val_acc=result.val_acc,
                         trainable_params=result.trainable_params, config=result.config, epochs=result.epochs,
                         artifact_uri=str(result.artifact_dir) if result.artifact_dir else None)
        db.set_cell_status(self.engine, self.cell_ids[cell], "done", best_config=result.chosen,
                           best_val_acc=result.val_acc, seeds=result.seeds, epochs=result.epochs)
        self.done.add(cell)
        return result
