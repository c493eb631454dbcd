"""End to end on real local Ray, a real MLflow store and a real SQLite leaderboard:
`alorectl sweep` -> `sweep status` -> `leaderboard` -> `export` (loaded into plain timm) -> `sweep resume`."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC
from itertools import combinations

import pytest
import timm
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

import alore
from presets import tiny_sweep
from alorectl.cli import app
from alorectl.tracking.observer import leaderboard_name

pytestmark = pytest.mark.slow  # sweeps or servers end to end: not in `make check`

runner = CliRunner()

EPOCHS = 3
PRESET = tiny_sweep(methods=["alore", "vpt", "linear"], train={"epochs": EPOCHS})


@pytest.fixture(scope="module")
def swept(demo_dir, tmp_path_factory):
    """One small sweep for the whole module (Ray starts once)."""
    root = tmp_path_factory.mktemp("sweep")
    work = root / "work"
    (work / "data").mkdir(parents=True)
    for item in demo_dir.iterdir():  # the data and demo backbone the demo preset would generate
        (work / "data" / item.name).symlink_to(item)
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(PRESET))
    result = runner.invoke(app, ["sweep", "run", str(preset), "--workdir", str(work), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    yield work, preset, result
    import ray

    ray.shutdown()


def query(work, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(work / "leaderboard.db") as conn:
        return conn.execute(sql, args).fetchall()


def trials(work) -> list[dict]:
    cols = ("method", "trial_key", "protocol", "status", "val_acc", "test_acc", "seed", "config", "started_at",
            "finished_at", "mlflow_run_id")
    rows = query(work, f"SELECT c.method, {', '.join('t.' + c for c in cols[1:])} FROM trial t "
                       "JOIN cell c ON c.id = t.cell_id ORDER BY t.id")
    return [{**dict(zip(cols, r)), "config": json.loads(r[7])} for r in rows]


def test_sweep_fills_the_leaderboard_and_prints_it(swept) -> None:
    work, _, result = swept
    for m in ("alore", "vpt", "linear"):
        assert f"done demo/digits/{m}" in result.output
    assert "Params" in result.output and "alorectl ui --workdir" in result.output, "the table and the UI link"
    out = runner.invoke(app, ["leaderboard", "--backbone", "demo", "--format", "json", "--workdir", str(work)])
    assert out.exit_code == 0, out.output
    board = {r["method"]: r for r in json.loads(out.stdout)}
    assert set(board) == {"alore", "vpt", "linear"}
    for r in board.values():
        cell = r["cells"]["digits"]
        # Reproducible from the leaderboard alone: the chosen configuration, seeds, epochs, weights.
        assert cell["seeds"] == [42] and cell["epochs"] == EPOCHS and cell["val_acc"] is not None
        assert cell["config"]["weights"].endswith("demo.safetensors")
    assert board["alore"]["params_m"] == pytest.approx((4 * 64 * 4 * 4 + 64) / 1e6)
    # Every method's number is a real test accuracy. Whether ALoRE beats the linear probe is a claim about
    # training, asserted by tests/test_train.py's longer runs: after 3 epochs on 400 test images the two are
    # within a few images of each other (64.25 vs 65.75 with today's package versions, and on the commit
    # before this session too), which is no test of the sweep machinery.
    assert all(0 < board[m]["tasks"]["digits"] <= 100 for m in board)


def test_each_cell_retrains_its_best_val_configuration_on_test_only(swept) -> None:
    work, _, _ = swept
    rows = trials(work)
    assert len(rows) == 3 * 3
    for method in ("alore", "vpt", "linear"):
        search = [t for t in rows if t["method"] == method and t["protocol"] == "search"]
        final = [t for t in rows if t["method"] == method and t["protocol"] == "final"]
        assert len(search) == 2 and len(final) == 1
        assert all(t["val_acc"] is not None and t["test_acc"] is None for t in search), "search never scores test"
        assert all(t["test_acc"] is not None and t["val_acc"] is None and t["seed"] == 42 for t in final)
        best = max(search, key=lambda t: (t["val_acc"], -int(t["trial_key"][-2:])))
        assert final[0]["config"] == best["config"], "the final run uses the best val200 configuration"
        chosen, val = query(work, "SELECT best_config, best_val_acc FROM cell WHERE method = ?", method)[0]
        assert json.loads(chosen) == best["config"] and val == best["val_acc"]
        configs = [json.dumps(t["config"], sort_keys=True) for t in search]
        assert len(set(configs)) == len(configs), "no configuration searched twice"
    linear = [t for t in rows if t["method"] == "linear" and t["protocol"] == "search"]
    assert all("dropout" not in t["config"] for t in linear), "the head alone has no dropout to search"


def test_trials_of_different_cells_overlap_in_time(swept) -> None:
    work, _, _ = swept
    rows = [t for t in trials(work)]
    assert all(t["started_at"] and t["finished_at"] and t["started_at"] < t["finished_at"] for t in rows)
    overlapping = [(a["method"], b["method"]) for a, b in combinations(rows, 2)
                   if a["method"] != b["method"] and a["started_at"] < b["finished_at"]
                   and b["started_at"] < a["finished_at"]]
    assert overlapping, "cells run side by side, not one after another"
    status = runner.invoke(app, ["sweep", "status", "tiny", "--json", "--workdir", str(work)])
    timing = json.loads(status.stdout)["timing"]
    assert timing["ended"] == 9 and timing["left"] == 0 and timing["running"] == 0
    assert 0 < timing["occupancy"] <= 1 and timing["slots"] >= 1


def test_mlflow_has_readable_cells_trials_and_the_leaderboard_table(swept) -> None:
    work, _, _ = swept
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("alore/tiny")
    # Whatever page MLflow opens the experiment on (GenAI overview or runs), its description links the runs table.
    assert f"(#/experiments/{exp.experiment_id}/runs?" in exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == ["alore · digits", "linear · digits", "vpt · digits"]
    assert len(children) == 9 and all(r.data.tags.get("alore.complete") == "1" for r in runs)
    names = sorted(r.info.run_name for r in children)
    assert "final · seed 42" in names and any(n.startswith("search 0 · lr=") for n in names)
    search_child = next(r for r in children if r.data.tags["protocol"] == "search")
    history = client.get_metric_history(search_child.info.run_id, "val_acc")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1)), "per-epoch metrics"
    assert "lr_now" in search_child.data.metrics and "lr" in search_child.data.params
    # The trial run spans the trial's real training time, not the logging time.
    from datetime import datetime

    row = next(t for t in trials(work) if t["mlflow_run_id"] == search_child.info.run_id)

    def ms(text: str) -> int:  # SQLite keeps UTC without a zone
        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)

    assert abs(search_child.info.start_time - ms(row["started_at"])) <= 1
    assert abs(search_child.info.end_time - ms(row["finished_at"])) <= 1
    alore_parent = next(r for r in parents if r.data.tags["method"] == "alore")
    assert {"val_acc", "test_acc", "params_m"} <= set(alore_parent.data.metrics)
    names = {a.path for a in client.list_artifacts(alore_parent.info.run_id, "final")}
    assert {"final/merged.safetensors", "final/adapter.safetensors", "final/metrics.json"} <= names
    board = client.get_experiment_by_name(leaderboard_name("demo"))
    entries = {r.info.run_name: r for r in client.search_runs([board.experiment_id])}
    assert set(entries) == {"alore", "vpt", "linear"}
    for r in entries.values():
        assert r.info.status == "FINISHED"
        # "01_digits": numbered in the benchmark's column order, rounded for display (tests/test_ui_board.py).
        assert {"01_digits", "all_mean", "params_m"} <= set(r.data.metrics) and "digits" in r.data.params
        assert r.data.metrics["all_mean"] == round(r.data.metrics["all_mean"], 2)
        assert f"(#/runs/{r.data.tags['cell_run.digits']})" in r.data.tags["mlflow.note.content"]
    # The best by val200 is registered before the leaderboard's last update, which links its version.
    assert "(#/models/alore-demo-digits/versions/" in "".join(r.data.tags["mlflow.note.content"]
                                                              for r in entries.values())
    assert "mlflow.note.content" in board.tags


def test_export_loads_into_plain_timm_with_the_adapted_outputs(swept, demo_dir, tmp_path) -> None:
    work, _, _ = swept
    out = tmp_path / "best"
    result = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "alore",
                                 "--out", str(out), "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["merged"] and card["num_classes"] == 10 and len(card["sha256"]["model.safetensors"]) == 64
    plain = timm.create_model(card["timm_name"], pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=10),
                              **card["timm_kwargs"]).eval()
    adapted = alore.apply(alore.create_backbone("demo", 10, weights=demo_dir / "demo.safetensors"), "alore",
                          dropout=card["config"]["dropout"]).eval()
    alore.api.load_adapter(adapted, out / "adapter.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = adapted(x)
        assert ((plain(x) - ref).norm() / ref.norm()).item() < 1e-4
    assert torch.equal(load_file(str(out / "model.safetensors"))["head.weight"], plain.head.weight)


def test_the_result_files_are_kept_once_in_tunes_storage(swept) -> None:
    work, _, _ = swept
    (uri,) = query(work, "SELECT artifact_uri FROM result WHERE method = 'alore'")[0:1][0]
    assert uri.startswith(str(work / "ray" / "tiny")) and (work / "ray" / "tiny").is_dir()
    assert not (work / "artifacts").exists(), "no second copy in the work folder"


def test_ended_trials_keep_their_reports_and_only_a_final_runs_last_checkpoint(swept) -> None:
    work, _, _ = swept
    trials = [d for d in (work / "ray" / "tiny").iterdir() if d.is_dir() and "__" in d.name]
    search = [d for d in trials if "__search-" in d.name]
    final = [d for d in trials if "__final-" in d.name]
    assert search and final
    assert all((d / "result.json").stat().st_size > 0 for d in search), "the curves stay"
    assert not [c.name for d in search for c in d.glob("checkpoint_*")], "never resumed: removed"
    for d in final:  # the last checkpoint holds the run's files; the ones before it are gone
        (last,) = d.glob("checkpoint_*")
        assert (last / "metrics.json").is_file(), d.name


def test_resume_reruns_nothing_and_duplicates_nothing(swept) -> None:
    work, _, _ = swept
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]

    def mlflow_runs() -> dict[str, str]:
        return {r.info.run_id: r.info.status for r in client.search_runs(experiments, max_results=1000)}

    def tune_files() -> dict:
        return {p: p.stat().st_mtime_ns for p in (work / "ray" / "tiny").rglob("*") if p.is_file()
                and "checkpoint_" in str(p)}

    before_rows, before_runs, before_files = trials(work), mlflow_runs(), tune_files()
    again = runner.invoke(app, ["sweep", "resume", "tiny", "--workdir", str(work)])
    assert again.exit_code == 0, again.output
    assert "done demo/digits" not in again.output, "finished cells are not rerun"
    assert trials(work) == before_rows
    assert mlflow_runs() == before_runs, "no MLflow run added or changed"
    assert tune_files() == before_files, "no trial ran again"
    unknown = runner.invoke(app, ["sweep", "status", "nope", "--workdir", str(work)])
    assert unknown.exit_code == 2 and "unknown sweep 'nope'; valid choices: tiny" in unknown.stderr


def test_grid_search_with_asha_pruning_still_works(swept) -> None:
    work, preset, _ = swept
    result = runner.invoke(app, ["sweep", "run", str(preset), "--workdir", str(work), "--name", "asha",
                                 "--methods", "alore", "--search", "grid", "--scheduler", "asha", "--epochs", "4"])
    assert result.exit_code == 0, result.output
    rows = query(work, "SELECT t.protocol, t.status, t.epochs_done, t.config FROM trial t JOIN cell c "
                       "ON c.id = t.cell_id JOIN sweep s ON s.id = c.sweep_id WHERE s.name = 'asha'")
    search = [r for r in rows if r[0] == "search"]
    assert len(search) == 4, "the whole grid: lr 2 x dropout 2"
    assert len({r[3] for r in search}) == 4 and {r[1] for r in search} <= {"done", "pruned"}
    assert [r[1] for r in rows if r[0] == "final"] == ["done"]
    assert query(work, "SELECT c.status FROM cell c JOIN sweep s ON s.id = c.sweep_id "
                       "WHERE s.name = 'asha'") == [("done",)]


def test_the_ui_opens_the_sweeps_leaderboard_as_the_ranked_table(swept, browser, tmp_path) -> None:
    """After a real sweep, `alorectl ui`'s printed link opens the leaderboard experiment's runs table in a
    headless Chromium: a row per method, ranked by the visible all_mean column."""
    from test_ui_browser import read_runs_table
    from ui_utils import running_ui

    from alorectl.tracking.links import VIEW_ID, experiment_url

    work, _, _ = swept
    uri = f"sqlite:///{work / 'mlflow.db'}"
    board = MlflowClient(uri).get_experiment_by_name(leaderboard_name("demo")).experiment_id
    with running_ui(tmp_path, "--tracking-uri", uri) as ui:
        url = experiment_url(ui.base_url, board, view=VIEW_ID)
        assert url in ui.output().split()
        rows = read_runs_table(browser, url, "all_mean", rows=3)
    assert {name for name, _ in rows} == {"alore", "vpt", "linear"}
    means = [float(value) for _, value in rows]
    assert means == sorted(means, reverse=True)
