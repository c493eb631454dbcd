"""What the leaderboard experiment holds for MLflow's UI, read back from a real MLflow store (no browser, no
server): rounded metrics named in the benchmark's order, the saved view, the description, the links from a
method's run to the cell runs and weights behind its numbers, and a store of the previous version renamed in
place. The same store opened in Chromium: tests/test_ui_browser.py."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ui_utils import METHODS, OFFSETS, SWEEP, TASKS, make_board, make_leaderboard_store

from alorectl.tracking import board as mlboard
from alorectl.tracking.client import Tracker
from alorectl.tracking.links import VIEW_ID, VIEW_TAG_PREFIX, experiment_fragment
from alorectl.tracking.observer import experiment_name, former_leaderboard_name, leaderboard_name


@pytest.fixture
def store(tmp_path: Path) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return MlflowClient(uri), make_leaderboard_store(uri)


def runs_by_method(client: MlflowClient, experiment: str) -> dict:
    return {r.info.run_name: r for r in client.search_runs([experiment])}


def test_metrics_are_rounded_to_two_decimals_and_the_exact_values_stay_in_the_csv(store) -> None:
    client, experiment = store
    run = runs_by_method(client, experiment)["alore"]
    mean = METHODS["alore"]
    assert run.data.metrics == {
        "01_cifar": 90.33, "02_svhn": 90.67, "03_eurosat": 89.67, "04_clevr_count": 89.33,
        "05_mean_natural": 90.5, "06_mean_specialized": 89.67, "07_mean_structured": 89.33,
        "all_mean": 90.0, "group_mean": 89.83,
        "params_m": 0.001,  # below 0.01 M: 2 significant digits, not 0.0
    }
    local = client.download_artifacts(run.info.run_id, "leaderboard/demo.csv")
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(Path(local).read_text()))}
    assert float(rows["alore"]["cifar"]) == mean + OFFSETS[0]  # 90.333…, exact
    assert float(rows["alore"]["Specialized"]) == mean + OFFSETS[2]


def test_shown_rounds_accuracies_and_keeps_tiny_params_readable() -> None:
    from alorectl.db.leaderboard import Column

    assert mlboard.shown(Column("all_mean", "All Mean", "all_mean"), 55.58333333) == 55.58
    assert mlboard.shown(Column("cifar", "CIFAR-100", "task"), 37.7512) == 37.75
    assert mlboard.shown(Column("params_m", "Params(M)", "params"), 0.0012345) == 0.0012
    assert mlboard.shown(Column("params_m", "Params(M)", "params"), 1.23456) == 1.23


def test_metric_names_sort_into_the_benchmarks_column_order() -> None:
    board = make_board()
    names = list(mlboard.metric_names(board).values())
    # The CLI's columns: tasks in VTAB's order (natural, natural, specialized, structured), groups, means, params.
    assert [c.key for c in board.columns] == [*TASKS, "Natural", "Specialized", "Structured", "all_mean",
                                              "group_mean", "params_m"]
    assert names == ["01_cifar", "02_svhn", "03_eurosat", "04_clevr_count", "05_mean_natural",
                     "06_mean_specialized", "07_mean_structured", "all_mean", "group_mean", "params_m"]
    assert sorted(names) == names, "MLflow orders metric columns by name"
    assert sorted(TASKS) != list(TASKS), "the tasks alone would sort differently"


def test_the_saved_view_shows_every_column_in_order_ranked_by_all_mean(store) -> None:
    client, experiment = store
    envelope = json.loads(client.get_experiment(experiment).tags[VIEW_TAG_PREFIX + VIEW_ID])
    state = json.loads(envelope["state"])
    metrics = [f"metrics.`{n}`" for n in mlboard.metric_names(make_board()).values()]
    assert state["selectedColumns"] == metrics  # group_mean among them
    assert state["columnOrder"] == [*metrics, mlboard.DURATION_COLUMN]  # Duration after the numbers
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`all_mean`", False)


def test_the_description_links_the_ranked_table_and_says_how_rows_are_ordered(store) -> None:
    client, experiment = store
    text = client.get_experiment(experiment).tags["mlflow.note.content"]
    assert f"]({experiment_fragment(experiment, view=VIEW_ID)})" in text
    assert "ranked by all_mean" in text and "paper's fixed method order" in text
    assert "alorectl leaderboard --backbone demo --suite vtab" in text


def test_a_methods_run_links_the_cell_run_and_weights_behind_each_number(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = make_leaderboard_store(uri)
    sweep = client.get_experiment_by_name(experiment_name(SWEEP)).experiment_id
    cells = {(r.data.tags["method"], r.data.tags["task"]): r.info.run_id for r in client.search_runs([sweep])}
    # The registered model of one cell (alorectl registers the best by val200 after the sweep): linked too.
    client.create_registered_model("alore-demo-cifar")
    version = client.create_model_version("alore-demo-cifar", f"runs:/{cells[('lora', 'cifar')]}/model",
                                          run_id=cells[("lora", "cifar")])
    tracker = Tracker(uri, artifact_root=tmp_path / "artifacts")
    mlboard.publish(tracker, make_board(run_ids=cells), experiment, "vtab", marks={}, sweep=SWEEP)
    runs = runs_by_method(client, experiment)
    assert len(runs) == len(METHODS), "updated in place"
    for method, run in runs.items():
        text = run.data.tags["mlflow.note.content"]
        for task in TASKS:
            run_id = cells[(method, task)]
            assert f"](#/runs/{run_id})" in text
            assert f"](#/experiments/{sweep}/runs/{run_id}/artifactPath/final)" in text
            assert run.data.tags[f"cell_run.{task}"] == run_id
    assert f"](#/models/alore-demo-cifar/versions/{version.version})" in runs["lora"].data.tags["mlflow.note.content"]
    assert "#/models/" not in runs["alore"].data.tags["mlflow.note.content"]


def test_a_store_of_the_previous_version_is_renamed_in_place(tmp_path: Path) -> None:
    """A workdir whose leaderboard is still ``alore/leaderboard/demo`` (same last part as the sweep ``alore/demo``
    in MLflow's breadcrumb): the next write renames it, keeping its id and its runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment(former_leaderboard_name("demo"), artifact_location=(tmp_path / "old").as_uri())
    client.create_run(old, run_name="alore", tags={"alore.key": "demo/alore"})
    tracker = Tracker(uri, artifact_root=tmp_path / "artifacts")
    assert tracker.experiment(leaderboard_name("demo"), former=former_leaderboard_name("demo")) == old
    assert client.get_experiment(old).name == leaderboard_name("demo")
    assert client.get_experiment_by_name(former_leaderboard_name("demo")) is None
    mlboard.publish(tracker, make_board(), old, "vtab", marks={}, sweep=SWEEP)
    assert sorted(runs_by_method(client, old)) == sorted(METHODS), "the old run is reused, not doubled"
    # Breadcrumbs show the name's last "/" part: the leaderboard and the sweep of the same name differ.
    assert leaderboard_name("demo").split("/")[-1] != experiment_name("demo").split("/")[-1]
    assert leaderboard_name("demo", simulated=True).split("/")[-1] != experiment_name("demo").split("/")[-1]
