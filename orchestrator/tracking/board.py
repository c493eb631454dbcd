"""The leaderboard experiment in MLflow: the paper's table 2 as a runs table a person can read.

:mod:`alorectl.tracking.observer` calls :func:`publish` with the board the CLI
prints (:func:`alorectl.results.leaderboard.build`); everything MLflow shows of
it is decided here:

* one run per method (named by the method), a metric per column of the CLI's
  table (:func:`metric_names`: ``01_cifar`` ..., numbered so that MLflow's
  by-name column order is the benchmark's), **rounded for display** (:func:`shown`: accuracies and means to 2
  decimals, Params(M) to 2 decimals or 2 significant digits when smaller than
  0.01, as the CLI prints it); the exact numbers stay in the run's
  ``leaderboard/<backbone>.csv`` and in the database;
* the saved view :data:`~alorectl.tracking.links.VIEW_ID` shows those columns
  in the CLI's (the benchmark's) order: tasks natural → specialized →
  structured, the group means, ``all_mean``, ``group_mean``, ``params_m``, and
  moves MLflow's Duration column (meaningless for a row that aggregates many
  runs) to the far right (when MLflow applies the view's column order);
* rows are **ranked by all_mean** in MLflow, while the CLI keeps the paper's
  fixed method order: the experiment's description says so;
* each method's run description links the cell run behind every number and
  its weights (the run's ``final/`` files and, when registered, the model
  version of ``alore-<backbone>-<task>``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from alorectl import db
from alorectl.db.leaderboard import Column, Leaderboard, Row

from .links import VIEW_ID, experiment_fragment

#: Decimals of every accuracy and mean in the MLflow table.
SHOWN_DIGITS = 2
#: MLflow's runs-table column of a run's duration; meaningless on aggregate rows, so shown last.
DURATION_COLUMN = "duration"


def metric_names(board: Leaderboard) -> dict[str, str]:
    """Column key -> MLflow metric, in the CLI's column order: ``01_<task>`` ... in the benchmark's task order,
    then ``NN_mean_<group>``, then ``all_mean``, ``group_mean``, ``params_m``.

    The number prefix is what keeps the benchmark's order in MLflow: its runs table sorts metric columns by
    name, in "Columns" and whenever the saved view's column order is not applied (MLflow 3.17 applies it on
    some first visits and not others), and ``all_mean`` < ``group_mean`` < ``params_m`` already read in the
    CLI's order after them.
    """
    names, n = {}, 0
    for column in board.columns:
        if column.kind in ("task", "group"):
            n += 1
            names[column.key] = f"{n:02d}_" + (f"mean_{column.key.lower()}" if column.kind == "group" else column.key)
        else:
            names[column.key] = column.key
    return names


def shown(column: Column, value: float) -> float:
    """``value`` as the MLflow table shows it: 2 decimals; Params(M) below 0.01 keeps 2 significant digits
    (a tiny test backbone's 0.0012 M, not 0.0)."""
    if column.kind == "params" and 0 < abs(value) < 0.01:
        return float(f"{value:.2g}")
    return round(value, SHOWN_DIGITS)


def row_metrics(board: Leaderboard, row: Row) -> dict[str, float]:
    """The rounded metrics of one method's row, in column order; missing cells (and incomplete means) left out."""
    names = metric_names(board)
    return {names[c.key]: shown(c, v) for c in board.columns if (v := board.value(row, c)) is not None}


def experiment_description(experiment_id: str, backbone: str, suite: str, simulated: bool = False) -> str:
    command = f"alorectl leaderboard --backbone {backbone} --suite {suite}" + (" --simulated" if simulated else "")
    warning = ("**SIMULATED** (alorectl bench scale): synthetic accuracies of simulated trials, never real "
               "results.\n\n" if simulated else "")
    return warning + (
        f"**[Open the ranked table]({experiment_fragment(experiment_id, view=VIEW_ID)})** · {backbone} on {suite}: "
        f"the paper's table 2, one run per method.\n\n"
        f"Top-1 test accuracy (%) per task, numbered in the benchmark's order (01_… natural, specialized, "
        f"structured), the group means (NN_mean_…), all_mean, group_mean and params_m (trainable parameters, M), "
        f"rounded to {SHOWN_DIGITS} decimals: the exact values are in each run's leaderboard/{backbone}.csv.\n\n"
        f"Rows are **ranked by all_mean** (best first) here; the command line lists the same rows in the paper's "
        f"fixed method order: `{command}`. A method's run links the cell run and the weights behind each number.")


def run_description(board: Leaderboard, row: Row, cells: dict[str, dict[str, str]]) -> str:
    """A method's run description: per task, its accuracy and links to the cell run and its weights.

    ``cells`` maps a task to its links: ``run`` (the cell run), ``weights`` (its final files), and
    ``model`` (the registered model version), each a markdown link, when known.
    """
    lines = [f"**{row.method}** on {board.backbone}: the cell run and the weights behind each number "
             f"(exact values in leaderboard/{board.backbone}.csv).", "",
             "| Task | Test (%) | Val (%) | Cell run | Weights | Registered model |",
             "| :-- | --: | --: | :-- | :-- | :-- |"]
    for task in board.tasks:
        entry = row.entries.get(task)
        if entry is None:
            continue
        links = cells.get(task, {})
        val = "-" if entry.val_acc is None else f"{entry.val_acc:.2f}"
        lines.append(f"| {board.labels.get(task, task)} | {entry.test_acc_mean:.2f} | {val} | "
                     f"{links.get('run', '-')} | {links.get('weights', '-')} | {links.get('model', '-')} |")
    return "\n".join(lines)


def cell_links(tracker: Any, board: Leaderboard, sweep_experiments: dict[str, str | None],
               registered: bool = True) -> dict[tuple[str, str], dict[str, str]]:
    """(method, task) -> markdown links of the cell run behind the number, its ``final/`` files and its
    registered model version (when ``registered`` and the run's model is a version of ``alore-<backbone>-<task>``).

    ``sweep_experiments``: a sweep's name -> its experiment id (None: not in this store), filled in as needed.
    """
    from .models import registered_name
    from .observer import experiment_name

    versions: dict[str, tuple[str, str]] = {}  # run id -> (registered model, version)
    if registered:
        for task in board.tasks:
            for version in _versions(tracker, registered_name(board.backbone, task)):
                versions[version.run_id] = (version.name, str(version.version))
    links: dict[tuple[str, str], dict[str, str]] = {}
    for row in board.rows:
        for task, entry in row.entries.items():
            run_id = entry.mlflow_run_id
            if not run_id:
                continue
            if entry.sweep not in sweep_experiments:
                found = tracker.client.get_experiment_by_name(experiment_name(entry.sweep))
                sweep_experiments[entry.sweep] = found.experiment_id if found else None
            experiment = sweep_experiments[entry.sweep]
            cell = {"run": f"[{entry.sweep} · {row.method} · {task}](#/runs/{run_id})"}
            if experiment is not None:
                cell["weights"] = f"[final/](#/experiments/{experiment}/runs/{run_id}/artifactPath/final)"
            if run_id in versions:
                name, version = versions[run_id]
                cell["model"] = f"[{name} v{version}](#/models/{name}/versions/{version})"
            links[(row.method, task)] = cell
    return links


def _versions(tracker: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return list(tracker.client.search_model_versions(f"name = '{name}'"))
    except MlflowException:  # no registry behind this store
        return []


def publish(tracker: Any, board: Leaderboard, experiment: str, suite: str, *, marks: dict[str, str],
            sweep: str, simulated: bool = False) -> None:
    """Write ``board`` into the leaderboard experiment ``experiment``: its description and saved view, one
    run per method (created once, updated in place), the table files as artifacts, the links."""
    from alorectl.results.render import plain_csv
    from alorectl.sweep.plan import searched_params

    from .observer import compact

    backbone = board.backbone
    order = list(metric_names(board).values())
    tracker.describe(experiment, experiment_description(experiment, backbone, suite, simulated),
                     metrics=order, order_by="all_mean", last=[DURATION_COLUMN])
    links = cell_links(tracker, board, {}, registered=not simulated)
    with tempfile.TemporaryDirectory(prefix="alore-board-") as tmp:
        (Path(tmp) / f"{backbone}.md").write_text(db.to_markdown(board) + "\n")
        (Path(tmp) / f"{backbone}.csv").write_text(plain_csv(board))  # the exact numbers the metrics round
        for row in board.rows:
            method = row.method
            run = tracker.find_or_create_run(experiment, f"{backbone}/{method}", method,
                                             {"backbone": backbone, "method": method, "suite": suite, **marks})
            params = {task: compact(searched_params(e.config)) for task, e in row.entries.items()}
            cells = {task: links.get((method, task), {}) for task in row.entries}
            tags = {"sweep": sweep, "chosen": json.dumps(params)[:5000],
                    "mlflow.note.content": run_description(board, row, cells),
                    **{f"cell_run.{task}": e.mlflow_run_id for task, e in row.entries.items() if e.mlflow_run_id}}
            tracker.log(run, params=params, metrics=row_metrics(board, row), tags=tags)
            tracker.artifacts(run, Path(tmp), "leaderboard")
            tracker.complete(run)
