"""End to end on real local Ray, a real MLflow store and a real SQLite leaderboard:
`alorectl sweep` -> `sweep status` -> `leaderboard` -> `export` (loaded into plain timm) -> `sweep resume`."""

from __future__ import annotations

import json
import sqlite3

import pytest
import timm
import torch
import yaml
from mlflow import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

import alore
from orchestrator.cli import app

runner = CliRunner()

PRESET = {
    "suite": "vtab",
    "data_root": "{workdir}/data/vtab-1k",
    "weights": {"demo": "{workdir}/data/demo.safetensors"},
    "backbones": ["demo"],
    "tasks": ["digits"],
    "methods": ["alore", "vpt"],
    "search": {"algorithm": "optuna", "trials": 2, "scheduler": "fifo"},
    "space": {"lr": [0.01, 0.005], "weight_decay": [0.001], "dropout": [0.1, 0.0]},
    "train": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32},
    "final": {"seeds": [42]},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


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
    result = runner.invoke(app, ["sweep", str(preset), "--workdir", str(work), "--name", "tiny"])
    assert result.exit_code == 0, result.output
    yield work, preset, result
    import ray

    ray.shutdown()


def rows(work, table: str) -> list[tuple]:
    with sqlite3.connect(work / "leaderboard.db") as conn:
        return conn.execute(f"SELECT * FROM {table}").fetchall()


def test_sweep_fills_the_leaderboard(swept) -> None:
    work, _, result = swept
    assert "done demo/digits/alore" in result.output and "done demo/digits/vpt" in result.output
    out = runner.invoke(app, ["leaderboard", "--backbone", "demo", "--format", "json", "--workdir", str(work)])
    assert out.exit_code == 0, out.output
    board = {r["method"]: r for r in json.loads(out.stdout)}
    assert set(board) == {"alore", "vpt"}
    for r in board.values():
        assert 0.0 <= r["tasks"]["digits"] <= 100.0 and r["all_mean"] == r["tasks"]["digits"]
        cell = r["cells"]["digits"]
        # Reproducible from the leaderboard alone: the chosen configuration, seeds and epochs.
        assert cell["seeds"] == [42] and cell["epochs"] == 2 and cell["config"]["lr"] in (0.01, 0.005)
        assert cell["val_acc"] is not None
    assert board["alore"]["params_m"] == pytest.approx((4 * 64 * 4 * 4 + 64) / 1e6)
    md = runner.invoke(app, ["leaderboard", "--backbone", "demo", "--format", "markdown", "--workdir", str(work)])
    assert "| alore |" in md.stdout and "Params(M)" in md.stdout


def test_search_sees_val_and_final_sees_test(swept) -> None:
    work, _, _ = swept
    trials = rows(work, "trial")
    with sqlite3.connect(work / "leaderboard.db") as conn:
        found = conn.execute("SELECT protocol, val_acc, test_acc, seed FROM trial").fetchall()
    search = [t for t in found if t[0] == "search"]
    final = [t for t in found if t[0] == "final"]
    assert len(search) == 4 and len(final) == 2 and len(trials) == 6
    assert all(v is not None and t is None for _, v, t, _ in search), "search trials never score test"
    assert all(t is not None and s == 42 for _, _, t, s in final)


def test_mlflow_has_cells_trials_and_artifacts(swept) -> None:
    work, _, _ = swept
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("alore/tiny")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.run_name != "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert {r.data.tags["method"] for r in parents} == {"alore", "vpt"}
    assert len(children) == 6 and all("protocol" in r.data.tags for r in children)
    search_child = next(r for r in children if r.data.tags["protocol"] == "search")
    history = client.get_metric_history(search_child.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2], "per-epoch metrics"
    alore_parent = next(r for r in parents if r.data.tags["method"] == "alore")
    names = {a.path for a in client.list_artifacts(alore_parent.info.run_id, "final")}
    assert {"final/merged.safetensors", "final/adapter.safetensors", "final/metrics.json"} <= names
    board = client.get_experiment_by_name("alore/leaderboard/demo")
    entries = client.search_runs([board.experiment_id])
    assert {r.info.run_name for r in entries} == {"digits/alore", "digits/vpt"}


def test_export_loads_into_plain_timm_with_the_adapted_outputs(swept, demo_dir, tmp_path) -> None:
    work, _, _ = swept
    out = tmp_path / "best"
    result = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "alore",
                                 "--out", str(out), "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["merged"] and card["num_classes"] == 10 and len(card["sha256"]["model.safetensors"]) == 64
    # The exact call the card and the README show.
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


def test_export_refuses_unknown_results_and_vpt_exports_its_adapter(swept, tmp_path) -> None:
    work, _, _ = swept
    bad = runner.invoke(app, ["export", "--backbone", "demo", "--task", "cifar", "--out", str(tmp_path / "x"),
                              "--workdir", str(work)])
    assert bad.exit_code == 2 and "valid choices: demo/digits/alore, demo/digits/vpt" in bad.stderr
    assert not (tmp_path / "x").exists()
    vpt = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "vpt",
                              "--out", str(tmp_path / "vpt"), "--workdir", str(work)])
    assert vpt.exit_code == 0
    card = json.loads((tmp_path / "vpt" / "card.json").read_text())
    assert card["merged"] is False and (tmp_path / "vpt" / "adapter.safetensors").is_file()
    assert not (tmp_path / "vpt" / "model.safetensors").exists()


def test_status_and_resume_rerun_nothing_and_duplicate_nothing(swept) -> None:
    work, _, _ = swept
    status = runner.invoke(app, ["sweep", "status", "tiny", "--json", "--workdir", str(work)])
    assert status.exit_code == 0
    data = json.loads(status.stdout)
    assert data["counts"]["done"] == 2 and data["total"] == 2
    before = {t: len(rows(work, t)) for t in ("sweep", "cell", "trial", "result")}
    again = runner.invoke(app, ["sweep", "resume", "tiny", "--workdir", str(work)])
    assert again.exit_code == 0, again.output
    assert "done demo/digits" not in again.output, "finished cells are not rerun"
    assert {t: len(rows(work, t)) for t in before} == before
    unknown = runner.invoke(app, ["sweep", "status", "nope", "--workdir", str(work)])
    assert unknown.exit_code == 2 and "unknown sweep 'nope'; valid choices: tiny" in unknown.stderr


@pytest.mark.parametrize("change,message", [
    ({"backbones": ["vit_q"]}, "unknown method" if False else "unknown backbone 'vit_q'"),
    ({"methods": ["alora"]}, "unknown method in preset"),
    ({"tasks": ["cifarr"]}, "cifarr"),
    ({"space": {"lr": [-1.0]}}, "bad grid value -1.0 for lr"),
    ({"search": {"algorithm": "random"}}, "unknown search algorithm in preset"),
    ({"data_root": "/nonexistent/vtab"}, "data root not found: /nonexistent/vtab"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, demo_dir, change, message) -> None:
    work = tmp_path / "work"
    preset = tmp_path / "bad.yaml"
    preset.write_text(yaml.safe_dump({**PRESET, "data_root": str(demo_dir / "vtab-1k"),
                                      "weights": {"demo": str(demo_dir / "demo.safetensors")}, **change}))
    result = runner.invoke(app, ["sweep", str(preset), "--workdir", str(work)])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not work.exists()


def test_malformed_yaml_and_unknown_preset(tmp_path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("suite: vtab\nmethods: [alore\n")
    result = runner.invoke(app, ["sweep", str(broken), "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "not valid YAML" in result.stderr
    result = runner.invoke(app, ["sweep", "vtabb", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "unknown preset 'vtabb'; valid choices: demo, fgvc, vtab" in result.stderr


def test_unreachable_db_is_one_line_with_the_password_masked(tmp_path, demo_dir) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({**PRESET, "data_root": str(demo_dir / "vtab-1k"),
                                      "weights": {"demo": str(demo_dir / "demo.safetensors")}}))
    url = "postgresql+psycopg://alice:s3cret@127.0.0.1:1/alore"
    result = runner.invoke(app, ["sweep", str(preset), "--workdir", str(tmp_path / "w"), "--db", url])
    assert result.exit_code == 2
    assert "127.0.0.1:1" in result.stderr and "s3cret" not in result.output + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
