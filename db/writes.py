"""Idempotent writes: every function here can be repeated without harm.

Each write is one ``INSERT ... ON CONFLICT (natural key) DO UPDATE`` (the
SQLite and PostgreSQL dialect inserts), so a retried trial, a resumed sweep
or two drivers racing on the same cell leave exactly one row, holding the
latest values.  The database resolves the race atomically; no
read-then-write window exists in Python.

Conventions shared by all functions:

* ``bind`` is an Engine (the write commits on its own) or a Connection /
  Session (it joins the caller's transaction; the caller commits);
* an argument left at ``None`` keeps what the row already holds, so a
  "trial finished" call need not repeat the config it was started with;
* JSON values and URIs are stored with credentials masked
  (:func:`db.urls.scrub_secrets`);
* accuracies are percentages, timestamps are stored in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite

from alorectl.db.models import (
    CELL_STATUSES,
    SWEEP_STATUSES,
    TRIAL_PROTOCOLS,
    TRIAL_STATUSES,
    Base,
    Cell,
    Result,
    Sweep,
    Trial,
    as_utc,
    utcnow,
)
from alorectl.db.session import Bind, dialect_name, write_scope
from alorectl.db.urls import mask_text, scrub_secrets

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert_sweep(
    bind: Bind,
    name: str,
    *,
    preset: str | None = None,
    suite: str | None = None,
    config: Mapping[str, Any] | None = None,
    status: str | None = None,
    simulated: bool | None = None,
) -> int:
    """Create the sweep ``name`` or update it (a resumed sweep); returns its id. ``simulated``: a sweep of
    simulated trials (``alorectl bench scale``), kept apart from real results."""
    _check("sweep status", status, SWEEP_STATUSES)
    now = utcnow()
    return _upsert(
        bind,
        Sweep,
        ("name",),
        {"name": name, "created_at": now},
        {"preset": preset, "suite": suite, "config": _json(config), "status": status, "updated_at": now,
         "simulated": simulated},
        insert_defaults={"config": {}, "status": "pending", "simulated": False},
    )


def set_sweep_status(bind: Bind, sweep_id: int, status: str) -> None:
    """Mark a sweep pending/running/done/failed/interrupted."""
    _check("sweep status", status, SWEEP_STATUSES)
    _update(bind, Sweep, sweep_id, {"status": status, "updated_at": utcnow()})


def delete_sweep(bind: Bind, name: str) -> bool:
    """Remove the sweep ``name`` with its cells, trials and results (``sweep run --force-new``); False when
    there was none. One statement: the foreign keys cascade, nothing is left half-deleted."""
    with write_scope(bind) as conn:
        return conn.execute(delete(Sweep.__table__).where(Sweep.__table__.c.name == name)).rowcount > 0


def upsert_cell(
    bind: Bind,
    sweep_id: int,
    backbone: str,
    task: str,
    method: str,
    *,
    status: str | None = None,
) -> int:
    """Create the cell (status ``pending``) or find it again; returns its id.

    Without ``status`` an existing cell keeps its status and results, which is
    what resuming a sweep needs: cells already ``done`` stay done.
    """
    _check("cell status", status, CELL_STATUSES)
    now = utcnow()
    return _upsert(
        bind,
        Cell,
        ("sweep_id", "backbone", "task", "method"),
        {"sweep_id": sweep_id, "backbone": backbone, "task": task, "method": method, "created_at": now},
        {"status": status, "updated_at": now if status is not None else None},
        insert_defaults={"status": "pending", "updated_at": now},
    )


def set_cell_status(
    bind: Bind,
    cell_id: int,
    status: str,
    *,
    best_config: Mapping[str, Any] | None = None,
    best_val_acc: float | None = None,
    seeds: Sequence[int] | None = None,
    epochs: int | None = None,
) -> None:
    """Move a cell to ``status``; when its search ends, record what was chosen.

    ``best_config``/``best_val_acc`` are the search's pick (selected on val
    only), ``seeds``/``epochs`` what the final runs use: together with the
    result row they are what reproduces a leaderboard entry.
    """
    _check("cell status", status, CELL_STATUSES)
    values = {
        "status": status,
        "best_config": _json(best_config),
        "best_val_acc": _float(best_val_acc),
        "seeds": _ints(seeds),
        "epochs": _int(epochs),
        "updated_at": utcnow(),
    }
    _update(bind, Cell, cell_id, values)


def record_trial(
    bind: Bind,
    cell_id: int,
    trial_key: str,
    *,
    protocol: str,
    status: str | None = None,
    config: Mapping[str, Any] | None = None,
    seed: int | None = None,
    val_acc: float | None = None,
    test_acc: float | None = None,
    epochs_done: int | None = None,
    node_id: str | None = None,
    mlflow_run_id: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> int:
    """Insert or update the trial ``trial_key`` (Tune's trial id) of a cell; returns its id.

    Call it whenever a trial starts, reports or ends; a retried trial
    (same key) updates its row.  A new trial starts as ``running``.
    """
    _check("trial protocol", protocol, TRIAL_PROTOCOLS)
    _check("trial status", status, TRIAL_STATUSES)
    return _upsert(
        bind,
        Trial,
        ("cell_id", "trial_key"),
        {"cell_id": cell_id, "trial_key": trial_key, "protocol": protocol},
        {
            "status": status,
            "config": _json(config),
            "seed": _int(seed),
            "val_acc": _float(val_acc),
            "test_acc": _float(test_acc),
            "epochs_done": _int(epochs_done),
            "node_id": node_id,
            "mlflow_run_id": mlflow_run_id,
            "started_at": _utc(started_at),
            "finished_at": _utc(finished_at),
        },
        insert_defaults={"status": "running", "config": {}, "epochs_done": 0},
    )


def record_result(
    bind: Bind,
    *,
    sweep_id: int,
    backbone: str,
    task: str,
    method: str,
    suite: str,
    test_acc_mean: float,
    seeds: Sequence[int],
    test_acc_std: float | None = None,
    val_acc: float | None = None,
    trainable_params: int | None = None,
    config: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    mlflow_run_id: str | None = None,
    artifact_uri: str | None = None,
) -> int:
    """Insert or update the final result of a cell of a sweep; returns its id.

    ``test_acc_mean``/``test_acc_std`` are over the final runs' ``seeds``
    (``n_seeds`` is ``len(seeds)``); ``val_acc`` is the search's best, the
    number the configuration was chosen by.
    """
    now = utcnow()
    return _upsert(
        bind,
        Result,
        ("backbone", "task", "method", "sweep_id"),
        {"backbone": backbone, "task": task, "method": method, "sweep_id": sweep_id, "created_at": now},
        {
            "suite": suite,
            "test_acc_mean": _float(test_acc_mean),
            "seeds": _ints(seeds),
            "n_seeds": len(seeds),
            "test_acc_std": _float(test_acc_std),
            "val_acc": _float(val_acc),
            "trainable_params": _int(trainable_params),
            "config": _json(config),
            "epochs": _int(epochs),
            "mlflow_run_id": mlflow_run_id,
            "artifact_uri": mask_text(artifact_uri) if artifact_uri is not None else None,
            "updated_at": now,
        },
        insert_defaults={"config": {}},
    )


# -- the one upsert ------------------------------------------------------------


def set_result_run(bind: Bind, sweep_id: int, backbone: str, task: str, method: str, mlflow_run_id: str) -> None:
    """Point an existing result at its MLflow run (once the run is completely logged)."""
    table = Result.__table__
    stmt = (update(table)
            .where(table.c.sweep_id == sweep_id, table.c.backbone == backbone, table.c.task == task,
                   table.c.method == method)
            .values(mlflow_run_id=mlflow_run_id, updated_at=utcnow()))
    with write_scope(bind) as conn:
        if conn.execute(stmt).rowcount == 0:
            raise LookupError(f"no result for {backbone}/{task}/{method} in sweep {sweep_id}")


def _upsert(
    bind: Bind,
    model: type[Base],
    key: tuple[str, ...],
    insert_only: dict[str, Any],
    values: dict[str, Any],
    *,
    insert_defaults: Mapping[str, Any] = {},
) -> int:
    """``INSERT insert_only + values ON CONFLICT (key) DO UPDATE SET values``; the row's id.

    ``values`` left at None are not written on conflict (the row keeps its
    own) and take ``insert_defaults`` (or the column's NULL) on insert.
    """
    table = model.__table__
    given = {k: v for k, v in values.items() if v is not None}
    row = {**insert_only, **{k: v for k, v in insert_defaults.items() if k not in given}, **given}
    stmt = _INSERTS[dialect_name(bind)](table).values(**row)
    # Something must be SET for RETURNING to yield the existing row's id;
    # re-setting a key column to itself changes nothing.
    set_ = {k: stmt.excluded[k] for k in given} or {key[-1]: stmt.excluded[key[-1]]}
    stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=set_).returning(table.c.id)
    with write_scope(bind) as conn:
        return conn.execute(stmt).scalar_one()


def _update(bind: Bind, model: type[Base], row_id: int, values: dict[str, Any]) -> None:
    table = model.__table__
    stmt = update(table).where(table.c.id == row_id).values({k: v for k, v in values.items() if v is not None})
    with write_scope(bind) as conn:
        if conn.execute(stmt).rowcount == 0:
            raise LookupError(f"no {table.name} with id {row_id}")


# -- value hygiene -------------------------------------------------------------


def _check(kind: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")


def _json(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else scrub_secrets(_plain(dict(value)))


def _plain(value: Any) -> Any:
    """JSON-ready: tuples become lists, numpy scalars Python numbers (no numpy import)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if not isinstance(value, (str, bytes)) and hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _int(value: int | None) -> int | None:
    return None if value is None else int(value)


def _ints(values: Sequence[int] | None) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)
