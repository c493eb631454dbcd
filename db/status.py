"""Progress of one sweep, for ``alorectl sweep status NAME``.

Counts of cells per status (pending / running / done / failed) and, per
cell, the best so far: the highest val accuracy among its search trials (or
the search's recorded pick once it ended), the configuration that scored it,
and the final test result once there is one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select

from alorectl.db.errors import SweepNotFoundError
from alorectl.db.models import CELL_STATUSES, Cell, Result, Sweep, Trial, as_utc
from alorectl.db.session import Bind, read_scope


@dataclass(frozen=True)
class CellProgress:
    backbone: str
    task: str
    method: str
    status: str
    n_trials: int
    trials_done: int
    best_val_acc: float | None  # best so far (search trials), or the search's pick
    best_config: dict[str, Any] | None
    test_acc_mean: float | None  # the final result, once recorded
    test_acc_std: float | None
    seeds: list[int] | None
    epochs: int | None


@dataclass(frozen=True)
class SweepStatus:
    name: str
    status: str
    preset: str | None
    suite: str | None
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]  # every cell status, zero-filled
    cells: tuple[CellProgress, ...]

    @property
    def total(self) -> int:
        return len(self.cells)

    @property
    def best(self) -> CellProgress | None:
        """The cell with the best test result so far, else the best val so far."""
        tested = [c for c in self.cells if c.test_acc_mean is not None]
        if tested:
            return max(tested, key=lambda c: c.test_acc_mean)  # type: ignore[arg-type, return-value]
        searched = [c for c in self.cells if c.best_val_acc is not None]
        return max(searched, key=lambda c: c.best_val_acc) if searched else None  # type: ignore[arg-type, return-value]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``--json``)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        data["total"] = self.total
        return data


def sweep_names(bind: Bind) -> list[str]:
    with read_scope(bind) as conn:
        return list(conn.execute(select(Sweep.name).order_by(Sweep.name)).scalars())


def sweep_status(bind: Bind, name: str) -> SweepStatus:
    """Where the sweep ``name`` stands; :class:`SweepNotFoundError` when there is none."""
    with read_scope(bind) as conn:
        sweep = conn.execute(select(Sweep.__table__).where(Sweep.name == name)).mappings().first()
        if sweep is None:
            raise SweepNotFoundError(name, conn.execute(select(Sweep.name)).scalars())

        trials = (
            select(
                Trial.cell_id,
                func.count().label("n_trials"),
                func.sum(case((Trial.status == "done", 1), else_=0)).label("trials_done"),
            )
            .group_by(Trial.cell_id)
            .subquery()
        )
        # The search trial with the highest val accuracy of each cell.
        best_rank = (
            func.row_number().over(partition_by=Trial.cell_id, order_by=(Trial.val_acc.desc(), Trial.id)).label("rank")
        )
        ranked = (
            select(Trial.cell_id, Trial.val_acc, Trial.config, best_rank)
            .where(Trial.protocol == "search", Trial.val_acc.is_not(None))
            .subquery()
        )
        best = select(ranked).where(ranked.c.rank == 1).subquery()
        stmt = (
            select(
                Cell.__table__,
                trials.c.n_trials,
                trials.c.trials_done,
                best.c.val_acc.label("trial_val_acc"),
                best.c.config.label("trial_config"),
                Result.test_acc_mean,
                Result.test_acc_std,
            )
            .outerjoin(trials, trials.c.cell_id == Cell.id)
            .outerjoin(best, best.c.cell_id == Cell.id)
            .outerjoin(
                Result,
                and_(
                    Result.sweep_id == Cell.sweep_id,
                    Result.backbone == Cell.backbone,
                    Result.task == Cell.task,
                    Result.method == Cell.method,
                ),
            )
            .where(Cell.sweep_id == sweep["id"])
            .order_by(Cell.backbone, Cell.task, Cell.method)
        )
        rows = conn.execute(stmt).mappings().all()

    cells = tuple(_progress(r) for r in rows)
    counts = {s: 0 for s in CELL_STATUSES}
    for c in cells:
        counts[c.status] += 1
    return SweepStatus(
        name=sweep["name"],
        status=sweep["status"],
        preset=sweep["preset"],
        suite=sweep["suite"],
        created_at=as_utc(sweep["created_at"]),
        updated_at=as_utc(sweep["updated_at"]),
        counts=counts,
        cells=cells,
    )


def _progress(r: Any) -> CellProgress:
    # Once the search ended its recorded pick is authoritative; until then
    # the best trial so far.  Value and config always come from one source.
    picked = r["best_config"] is not None or r["best_val_acc"] is not None
    return CellProgress(
        backbone=r["backbone"],
        task=r["task"],
        method=r["method"],
        status=r["status"],
        n_trials=r["n_trials"] or 0,
        trials_done=int(r["trials_done"] or 0),
        best_val_acc=r["best_val_acc"] if picked else r["trial_val_acc"],
        best_config=r["best_config"] if picked else r["trial_config"],
        test_acc_mean=r["test_acc_mean"],
        test_acc_std=r["test_acc_std"],
        seeds=r["seeds"],
        epochs=r["epochs"],
    )


@dataclass(frozen=True)
class TrialRow:
    """One recorded trial of a sweep, with its cell's natural key."""

    backbone: str
    task: str
    method: str
    trial_key: str
    protocol: str
    status: str
    seed: int | None
    config: dict[str, Any]
    val_acc: float | None
    test_acc: float | None
    epochs_done: int
    node_id: str | None
    mlflow_run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None


def sweep_trials(bind: Bind, name: str) -> list[TrialRow]:
    """Every recorded trial of the sweep ``name`` (empty when it has none yet)."""
    stmt = (
        select(Cell.backbone, Cell.task, Cell.method, Trial.trial_key, Trial.protocol, Trial.status, Trial.seed,
               Trial.config, Trial.val_acc, Trial.test_acc, Trial.epochs_done, Trial.node_id, Trial.mlflow_run_id,
               Trial.started_at, Trial.finished_at)
        .join(Cell, Cell.id == Trial.cell_id)
        .join(Sweep, Sweep.id == Cell.sweep_id)
        .where(Sweep.name == name)
        .order_by(Trial.id)
    )
    with read_scope(bind) as conn:
        rows = conn.execute(stmt).mappings().all()
    return [TrialRow(**{**r, "config": r["config"] or {},
                        "started_at": as_utc(r["started_at"]) if r["started_at"] else None,
                        "finished_at": as_utc(r["finished_at"]) if r["finished_at"] else None}) for r in rows]


def sweep_config(bind: Bind, name: str) -> dict[str, Any]:
    """The stored plan of the sweep ``name`` (credentials masked); :class:`SweepNotFoundError` if none."""
    with read_scope(bind) as conn:
        config = conn.execute(select(Sweep.config).where(Sweep.name == name)).scalar_one_or_none()
        if config is None:
            raise SweepNotFoundError(name, conn.execute(select(Sweep.name)).scalars())
    return config


def results_of(bind: Bind, name: str) -> list[dict[str, Any]]:
    """The result rows of the sweep ``name``, as plain dicts."""
    stmt = select(Result.__table__).join(Sweep, Sweep.id == Result.sweep_id).where(Sweep.name == name)
    with read_scope(bind) as conn:
        return [dict(r) for r in conn.execute(stmt).mappings().all()]
