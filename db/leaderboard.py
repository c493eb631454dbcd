"""The leaderboard of one backbone, laid out like the paper's tables 1 and 2.

    Method | task ... | Natural | Specialized | Structured | All Mean | Group Mean | Params(M)

A row per method, a column per task (test top-1 %, mean over the final
seeds), then the mean of each task group, the mean over all tasks, the mean
of the group means and the mean trainable parameters in millions.  Without
groups (FGVC, table 1) the means reduce to one "Mean" column.

Which result fills a cell: for each (task, method) the **most recent** result
row of the backbone (latest ``updated_at``, across sweeps).  Not the best
test accuracy among sweeps: every sweep already chose its configuration on
val200 only, and picking among sweeps by test accuracy would be selecting on
the test set.  The newest row is the current measurement of the current
code; rerun an old sweep (or delete a newer one) to bring its row back.

Means are only shown for complete rows: a mean over the tasks a method
happens to have finished would not compare with the others' means.  Params(M)
averages over the tasks present (parameters hardly vary across tasks; the
head is not counted).  "Best per column" compares values at the displayed
precision (ties all marked), higher is better, and Params(M) is not marked
(linear probing would always win it).

``db/`` knows no task tables: the caller passes the column order, the task
→ group mapping and display labels (alore's task registry has them).  The
renderers are pure functions of :class:`Leaderboard`; colouring a terminal
table is the CLI's job (it can use ``columns``, ``value`` and ``is_best``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from statistics import fmean
from typing import Any, Literal

from sqlalchemy import func, select

from alorectl.db.models import Result, Sweep, as_utc
from alorectl.db.session import Bind, read_scope

ColumnKind = Literal["task", "group", "all_mean", "group_mean", "params"]

#: Decimals shown (and compared for "best"), as in the paper's tables.
TASK_DIGITS = 1
MEAN_DIGITS = 2
MISSING = "-"


@dataclass(frozen=True)
class Entry:
    """One filled cell: a task's result for a method, with what reproduces it."""

    task: str
    method: str
    test_acc_mean: float
    test_acc_std: float | None
    n_seeds: int
    val_acc: float | None
    trainable_params: int | None
    config: dict[str, Any]
    epochs: int | None
    seeds: list[int]
    sweep: str
    mlflow_run_id: str | None
    artifact_uri: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Row:
    """A method's row: per-task test accuracy and the derived columns."""

    method: str
    tasks: dict[str, float | None]
    group_means: dict[str, float | None]
    all_mean: float | None
    group_mean: float | None
    params_m: float | None
    entries: dict[str, Entry]


@dataclass(frozen=True)
class Column:
    key: str  # the task or group name, or all_mean / group_mean / params_m
    label: str
    kind: ColumnKind

    @property
    def digits(self) -> int:
        return TASK_DIGITS if self.kind == "task" else MEAN_DIGITS


@dataclass(frozen=True)
class Leaderboard:
    backbone: str
    suite: str | None
    tasks: tuple[str, ...]
    groups: dict[str, str]  # task -> group; empty: no group columns
    rows: tuple[Row, ...]
    labels: dict[str, str] = field(default_factory=dict)
    best: dict[str, frozenset[str]] = field(default_factory=dict)  # column key -> methods

    @property
    def group_names(self) -> tuple[str, ...]:
        """Groups in order of their first task."""
        return tuple(dict.fromkeys(self.groups[t] for t in self.tasks if t in self.groups))

    @property
    def columns(self) -> tuple[Column, ...]:
        cols = [Column(t, self.labels.get(t, t), "task") for t in self.tasks]
        if self.group_names:
            cols += [Column(g, self.labels.get(g, g), "group") for g in self.group_names]
            cols += [Column("all_mean", "All Mean", "all_mean"), Column("group_mean", "Group Mean", "group_mean")]
        else:
            cols.append(Column("all_mean", "Mean", "all_mean"))
        cols.append(Column("params_m", "Params(M)", "params"))
        return tuple(cols)

    def value(self, row: Row, column: Column) -> float | None:
        match column.kind:
            case "task":
                return row.tasks.get(column.key)
            case "group":
                return row.group_means.get(column.key)
            case "all_mean":
                return row.all_mean
            case "group_mean":
                return row.group_mean
            case "params":
                return row.params_m

    def is_best(self, method: str, column: Column) -> bool:
        return method in self.best.get(column.key, frozenset())


def leaderboard(
    bind: Bind,
    backbone: str,
    *,
    suite: str | None = None,
    task_order: Sequence[str] | None = None,
    groups: Mapping[str, str] | None = None,
    method_order: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    simulated: bool = False,
) -> Leaderboard:
    """The leaderboard of ``backbone`` (optionally one ``suite``).

    ``task_order``: the task columns (default: the tasks of ``groups`` in
    its order, else the tasks found, sorted); results for other tasks are left
    out.  ``groups``: task → group name, e.g. ``{"cifar": "Natural", ...}``.
    ``method_order``: row order (other methods follow, sorted); a method
    appears once it has one result.  ``labels``: display names of tasks and
    groups (e.g. ``{"cifar": "CIFAR-100"}``).
    """
    groups = dict(groups or {})
    entries = _latest_entries(bind, backbone, suite, simulated)
    if task_order is not None:
        tasks = tuple(task_order)
    elif groups:
        tasks = tuple(groups)
    else:
        tasks = tuple(sorted({e.task for e in entries}))
    if groups:
        ungrouped = [t for t in tasks if t not in groups]
        if ungrouped:
            raise ValueError(f"tasks without a group: {', '.join(ungrouped)}")
        clash = set(groups.values()) & {*tasks, "all_mean", "group_mean", "params_m"}
        if clash:
            raise ValueError(f"group names clash with column names: {', '.join(sorted(clash))}")

    by_method: dict[str, dict[str, Entry]] = {}
    for e in entries:
        if e.task in tasks:
            by_method.setdefault(e.method, {})[e.task] = e
    order = list(dict.fromkeys(m for m in (method_order or ()) if m in by_method))
    order += sorted(set(by_method) - set(order))

    rows = tuple(_row(m, by_method[m], tasks, groups) for m in order)
    board = Leaderboard(backbone, suite, tasks, {t: groups[t] for t in tasks if t in groups}, rows, dict(labels or {}))
    best = {col.key: frozenset(_best(board, col)) for col in board.columns if col.kind != "params"}
    return replace(board, best=best)


def _latest_entries(bind: Bind, backbone: str, suite: str | None, simulated: bool = False) -> list[Entry]:
    """The most recent result row per (task, method) of the backbone: of real sweeps only, or (``simulated``)
    of simulated sweeps only (``alorectl bench scale``): the two never mix."""
    recency = (
        func.row_number()
        .over(partition_by=(Result.task, Result.method), order_by=(Result.updated_at.desc(), Result.id.desc()))
        .label("recency")
    )
    ranked = (
        select(Result.__table__, Sweep.name.label("sweep_name"), recency)
        .join(Sweep, Sweep.id == Result.sweep_id)
        .where(Result.backbone == backbone, Sweep.simulated.is_(simulated))
    )
    if suite is not None:
        ranked = ranked.where(Result.suite == suite)
    ranked = ranked.subquery()
    stmt = select(ranked).where(ranked.c.recency == 1).order_by(ranked.c.method, ranked.c.task)
    with read_scope(bind) as conn:
        rows = conn.execute(stmt).mappings().all()
    return [
        Entry(
            task=r["task"],
            method=r["method"],
            test_acc_mean=r["test_acc_mean"],
            test_acc_std=r["test_acc_std"],
            n_seeds=r["n_seeds"],
            val_acc=r["val_acc"],
            trainable_params=r["trainable_params"],
            config=r["config"] or {},
            epochs=r["epochs"],
            seeds=list(r["seeds"] or []),
            sweep=r["sweep_name"],
            mlflow_run_id=r["mlflow_run_id"],
            artifact_uri=r["artifact_uri"],
            updated_at=as_utc(r["updated_at"]),
        )
        for r in rows
    ]


def _row(method: str, entries: dict[str, Entry], tasks: tuple[str, ...], groups: dict[str, str]) -> Row:
    acc = {t: (entries[t].test_acc_mean if t in entries else None) for t in tasks}
    group_means: dict[str, float | None] = {}
    if groups:
        for g in dict.fromkeys(groups[t] for t in tasks):
            group_means[g] = _complete_mean([acc[t] for t in tasks if groups[t] == g])
    params = [e.trainable_params for e in entries.values() if e.trainable_params is not None]
    return Row(
        method=method,
        tasks=acc,
        group_means=group_means,
        all_mean=_complete_mean(list(acc.values())),
        group_mean=_complete_mean(list(group_means.values())) if group_means else None,
        params_m=fmean(params) / 1e6 if params else None,
        entries=dict(entries),
    )


def _complete_mean(values: list[float | None]) -> float | None:
    """The mean, or None when a value is missing (or there are none)."""
    if not values or any(v is None for v in values):
        return None
    return fmean(values)  # type: ignore[arg-type]


def _best(board: Leaderboard, column: Column) -> list[str]:
    shown = {r.method: round(v, column.digits) for r in board.rows if (v := board.value(r, column)) is not None}
    top = max(shown.values(), default=None)
    return [m for m, v in shown.items() if v == top]


# -- renderers -----------------------------------------------------------------


def format_value(column: Column, value: float | None) -> str:
    """A cell as text: 1 decimal for tasks, 2 for means and Params(M), '-' when missing."""
    if value is None:
        return MISSING
    if column.kind == "params" and 0 < value < 0.01:
        return f"{value:.2g}"  # tiny test backbones: 0.0012, not 0.00
    return f"{value:.{column.digits}f}"


def to_rows(board: Leaderboard, *, mark: str = "{}") -> tuple[list[str], list[list[str]]]:
    """Header and text rows; best cells formatted with ``mark`` (e.g. ``"**{}**"``)."""
    header = ["Method", *(c.label for c in board.columns)]
    rows = []
    for row in board.rows:
        cells = [row.method]
        for col in board.columns:
            text = format_value(col, board.value(row, col))
            cells.append(mark.format(text) if board.is_best(row.method, col) else text)
        rows.append(cells)
    return header, rows


def detail_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """One row per filled cell with what reproduces it: config, seeds, epochs, run."""
    header = ["Method", "Task", "Test", "Std", "Seeds", "Epochs", "Val", "Params", "Config", "Sweep", "MLflow run"]
    rows = []
    for row in board.rows:
        for task in board.tasks:
            e = row.entries.get(task)
            if e is None:
                continue
            rows.append(
                [
                    row.method,
                    board.labels.get(task, task),
                    f"{e.test_acc_mean:.2f}",
                    _opt(e.test_acc_std, "{:.2f}"),
                    " ".join(map(str, e.seeds)) or MISSING,
                    _opt(e.epochs, "{}"),
                    _opt(e.val_acc, "{:.2f}"),
                    _opt(e.trainable_params, "{}"),
                    json.dumps(e.config, sort_keys=True, separators=(",", ":")),
                    e.sweep,
                    e.mlflow_run_id or MISSING,
                ]
            )
    return header, rows


def to_markdown(board: Leaderboard, *, details: bool = True) -> str:
    """A GitHub-markdown table, best per column in bold; then the details table."""
    header, rows = to_rows(board, mark="**{}**")
    align = [":--"] + ["--:"] * (len(header) - 1)
    text = _md_table(header, align, rows)
    if details and rows:
        d_header, d_rows = detail_rows(board)
        d_rows = [[*r[:8], f"`{r[8]}`", *r[9:]] for r in d_rows]
        text += "\n\n" + _md_table(d_header, [":--", ":--"] + ["--:"] * 6 + [":--"] * 3, d_rows)
    return text


def to_csv(board: Leaderboard, *, details: bool = False, mark_best: bool = True) -> str:
    """The table as CSV, best cells suffixed with ``*``; ``details``: the detail rows instead."""
    header, rows = detail_rows(board) if details else to_rows(board, mark="{}*" if mark_best else "{}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def to_records(board: Leaderboard) -> list[dict[str, Any]]:
    """One JSON-ready object per method: per-task accuracies, means, params, best, cells."""
    records = []
    for row in board.rows:
        records.append(
            {
                "method": row.method,
                "backbone": board.backbone,
                "suite": board.suite,
                "tasks": row.tasks,
                "group_means": row.group_means,
                "all_mean": row.all_mean,
                "group_mean": row.group_mean,
                "params_m": row.params_m,
                "best": [c.key for c in board.columns if board.is_best(row.method, c)],
                "cells": {
                    task: {
                        "test_acc_mean": e.test_acc_mean,
                        "test_acc_std": e.test_acc_std,
                        "n_seeds": e.n_seeds,
                        "seeds": e.seeds,
                        "epochs": e.epochs,
                        "val_acc": e.val_acc,
                        "trainable_params": e.trainable_params,
                        "config": e.config,
                        "sweep": e.sweep,
                        "mlflow_run_id": e.mlflow_run_id,
                        "artifact_uri": e.artifact_uri,
                        "updated_at": e.updated_at.isoformat(),
                    }
                    for task, e in row.entries.items()
                },
            }
        )
    return records


def to_json(board: Leaderboard, *, indent: int | None = 2) -> str:
    return json.dumps(to_records(board), indent=indent)


def _opt(value: Any, fmt: str) -> str:
    return MISSING if value is None else fmt.format(value)


def _md_table(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(align), *map(line, rows)])
