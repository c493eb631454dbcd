"""A sweep's results as MLflow models on a real MLflow server: each final cell's merged weights are a model
that ``mlflow.pytorch.load_model`` returns as a plain timm module, and the best method of (backbone, task) by
val200 is ``models:/alore-<backbone>-<task>@best``; a better result moves the alias, older versions stay."""

from __future__ import annotations

import contextlib
import json

import mlflow
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from alore.data import load_task
from alore.train import evaluate
from alorectl import db
from alorectl.cli import app
from presets import tiny_sweep
from alorectl.tracking import models
from ui_utils import free_port, start_mlflow_server, stop

pytestmark = pytest.mark.slow
runner = CliRunner()

PRESET = tiny_sweep(methods=["alore", "lora", "vpt"], search={"trials": 3},
                    method_space={"vpt": {"dropout": [0.0]}})  # VPT's grid: 2 points, its whole grid in 2 trials


@pytest.fixture(scope="module")
def served(demo_dir, tmp_path_factory):
    """A real MLflow server and one small sweep logged to it (alore and lora merge, VPT cannot)."""
    import ray

    root = tmp_path_factory.mktemp("models")
    work = root / "work"
    (work / "data").mkdir(parents=True)
    for item in demo_dir.iterdir():
        (work / "data" / item.name).symlink_to(item)
    preset = root / "tiny.yaml"
    preset.write_text(yaml.safe_dump(PRESET))
    port = free_port()
    server = start_mlflow_server(root / "server.db", port)
    url = f"http://127.0.0.1:{port}"
    try:
        result = runner.invoke(app, ["sweep", "run", str(preset), "--workdir", str(work), "--name", "m1",
                                     "--tracking-uri", url])
        assert result.exit_code == 0, result.output
        yield work, url
    finally:
        ray.shutdown()
        stop(server)


def results(work) -> dict[str, dict]:
    engine = db.connect(f"sqlite:///{work / 'leaderboard.db'}")
    try:
        return {r["method"]: r for r in db.results_of(engine, "m1")}
    finally:
        engine.dispose()


def test_best_model_loads_from_the_registry_and_scores_as_its_card(served, tmp_path, monkeypatch) -> None:
    work, url = served
    rows = results(work)
    best = max((r for m, r in rows.items() if m != "vpt"), key=lambda r: r["val_acc"])
    client = MlflowClient(url)
    version = client.get_model_version_by_alias("alore-demo-digits", "best")
    assert version.run_id == best["mlflow_run_id"], "the best mergeable method by val200"
    assert not models.has_model(client, rows["vpt"]["mlflow_run_id"]), "VPT has no plain timm form"

    out = tmp_path / "export"
    done = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", best["method"],
                               "--out", str(out), "--workdir", str(work)])
    assert done.exit_code == 0, done.output
    card = json.loads((out / "card.json").read_text())

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    model = mlflow.pytorch.load_model("models:/alore-demo-digits@best")
    import timm

    assert isinstance(model, timm.models.VisionTransformer) and not model.training
    assert model.num_classes == card["num_classes"] == 10
    cfg = model.pretrained_cfg
    as_json = lambda d: json.loads(json.dumps(d))  # noqa: E731  (timm keeps tuples, the card JSON lists)
    assert as_json({k: cfg[k] for k in card["preprocessing"]}) == as_json(card["preprocessing"])
    task = load_task(work / "data" / "vtab-1k", "vtab", "digits", "final", image_size=cfg["input_size"][-1],
                     mean=cfg["mean"], std=cfg["std"], device="cpu")
    with torch.no_grad():
        accuracy = evaluate(model, task.eval, 64, contextlib.nullcontext)
    assert accuracy == pytest.approx(card["weights_test_acc"], abs=1e-9)


def test_a_better_result_moves_the_alias_and_the_old_version_stays(served) -> None:
    work, url = served
    rows = results(work)
    client = MlflowClient(url)
    first = models.register(client, "demo", "scratch", rows["lora"]["mlflow_run_id"], 50.0)
    assert first.moved and client.get_model_version_by_alias("alore-demo-scratch", "best").version == first.version
    better = models.register(client, "demo", "scratch", rows["alore"]["mlflow_run_id"], 60.0)
    assert better.moved and better.version != first.version
    again = models.register(client, "demo", "scratch", rows["lora"]["mlflow_run_id"], 50.0)
    assert again.version == first.version and not again.moved, "a run is registered once; a worse one moves nothing"
    versions = sorted(v.version for v in client.search_model_versions("name = 'alore-demo-scratch'"))
    assert versions == sorted([first.version, better.version]), "the old version stays"
    assert client.get_model_version_by_alias("alore-demo-scratch", "best").version == better.version


def test_export_register_registers_the_exported_best_once(served, tmp_path) -> None:
    work, url = served
    best = max((r for m, r in results(work).items() if m != "vpt"), key=lambda r: r["val_acc"])
    client = MlflowClient(url)
    before = client.search_model_versions("name = 'alore-demo-digits'")
    done = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", best["method"],
                               "--register",
                               "--out", str(tmp_path / "x"), "--workdir", str(work), "--tracking-uri", url])
    assert done.exit_code == 0, done.output
    assert "registered alore-demo-digits version" in done.output
    after = client.search_model_versions("name = 'alore-demo-digits'")
    assert len(after) == len(before) == 1, "the sweep registered it already: no second version"


# ---- pictures of each cell's search ------------------------------------------------------------------------

def test_cells_with_three_complete_search_trials_have_pictures_of_their_search(served) -> None:
    work, url = served
    rows = results(work)
    client = MlflowClient(url)
    for method in ("alore", "lora"):  # 3 search trials each
        logged = {f.path for f in client.list_artifacts(rows[method]["mlflow_run_id"], "search")}
        assert logged == {"search/param_importances.png", "search/parallel_coordinate.png"}, method
    assert not client.list_artifacts(rows["vpt"]["mlflow_run_id"], "search"), "VPT's grid is 2 trials: no pictures"


def test_analyze_search_draws_the_same_pictures_to_files(served, tmp_path) -> None:
    work, _ = served
    out = tmp_path / "pics"
    done = runner.invoke(app, ["analyze", "search", "--backbone", "demo", "--task", "digits", "--method", "lora",
                               "--workdir", str(work), "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in out.iterdir()) == ["parallel_coordinate.png", "param_importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in out.iterdir())
    few = runner.invoke(app, ["analyze", "search", "--backbone", "demo", "--task", "digits", "--method", "vpt",
                              "--workdir", str(work), "--out", str(tmp_path / "none")])
    assert few.exit_code == 2 and "has 2 complete trial(s); its pictures need at least 3" in few.stderr
    assert not (tmp_path / "none").exists()
