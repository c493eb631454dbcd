"""The paper's analyses (table 22, figures 4/7 and 5) of two short demo runs: the library and `alorectl analyze`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from alore import analysis
from alore.analysis.attention import HEADER_PX, MIN_CELL_PX
from alore.artifacts import write_run_files
from alore.train import TrainConfig, fit
from alorectl.cli import app

pytestmark = pytest.mark.slow  # sweeps or servers end to end: not in `make check`

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(demo_dir, tmp_path_factory):
    """ALoRE and LoRA trained briefly on digits, each in a run folder as `alorectl train` leaves it."""
    out = {}
    for method in ("alore", "lora"):
        keep: dict = {}
        config = TrainConfig(backbone="demo", weights=str(demo_dir / "demo.safetensors"), task="digits",
                             data_root=str(demo_dir / "vtab-1k"), method=method, lr=0.01, weight_decay=0.001,
                             epochs=3, warmup_epochs=1, batch_size=32, device="cpu")
        metrics = fit(config, keep=keep)
        folder = tmp_path_factory.mktemp(f"run_{method}")
        write_run_files(folder, metrics, keep["model"], keep["data"])
        out[method] = (folder, metrics)
    return out


def inputs(demo_dir) -> list[str]:
    return ["--weights", str(demo_dir / "demo.safetensors"), "--data-root", str(demo_dir / "vtab-1k"),
            "--device", "cpu"]


def rebuilt(runs, demo_dir, method="alore"):
    info = analysis.read_adapter_info(runs[method][0])
    model = analysis.load_model(info, demo_dir / "demo.safetensors")
    return model, analysis.load_eval_split(model, demo_dir / "vtab-1k", "vtab", "digits", info.num_classes)


# ---- library ----------------------------------------------------------------------------------

def test_cls_attention_equals_timms_own_attention_matrix(runs, demo_dir) -> None:
    """The hook's softmax(q k^T) is what timm's unfused attention computes (read off its attn_drop input)."""
    model, split = rebuilt(runs, demo_dir)
    x, _ = next(split.batches(3))
    attn = model.blocks[-1].attn
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    attn.fused_attn = False
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        attn.fused_attn = True
    timm_cls = seen[-1][:, :, 0, model.num_prefix_tokens:].mean(1).reshape(3, 4, 4)
    torch.testing.assert_close(analysis.cls_attention(model, x), timm_cls)


def test_attention_maps_change_with_the_experts_kept(runs, demo_dir) -> None:
    model, split = rebuilt(runs, demo_dir)
    grid = analysis.expert_attention(model, split, 2)
    assert grid.columns == ["image", "Single-1", "Single-2", "Single-3", "Single-4", "Increment-4"]
    assert grid.maps.shape == (2, 5, 4, 4) and grid.labels == [0, 1], "one image per class in turn"
    assert not torch.allclose(grid.maps[:, 0], grid.maps[:, 4]), "Single-1 and all experts attend alike"


def test_embeddings_are_what_the_head_reads_and_scores_are_finite(runs, demo_dir) -> None:
    model, split = rebuilt(runs, demo_dir, "lora")
    small = analysis.subset(split, 60)
    features, labels = analysis.head_inputs(model, small)
    x, _ = next(small.batches(60))
    with torch.no_grad():
        torch.testing.assert_close(model.get_classifier()(torch.from_numpy(features)), model(x))
    emb = analysis.score(analysis.Embedding("lora", features, labels))
    assert -1.0 <= emb.silhouette <= 1.0 and 0.0 <= emb.knn_acc <= 100.0
    two_clusters = np.array([[1, 0.1], [1, 0.2], [1, 0.15], [1, 0.05], [0.1, 1], [0.2, 1], [0.15, 1], [0.05, 1]])
    assert analysis.knn_accuracy(two_clusters, np.array([0, 0, 0, 0, 1, 1, 1, 1]), k=3) == 100.0
    assert analysis.knn_accuracy(two_clusters, np.array([0, 0, 0, 1, 1, 1, 1, 1]), k=3) == 87.5


# ---- the CLI with --from ---------------------------------------------------------------------------

def test_experts_cli_all_experts_reproduce_the_models_accuracy_and_single_experts_change_it(runs, demo_dir,
                                                                                             tmp_path) -> None:
    """Table 22 from an export folder (weights and data root read from its card.json)."""
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy2(runs["alore"][0] / "adapter.safetensors", folder)
    (folder / "card.json").write_text(json.dumps({"suite": "vtab", "config": {
        "weights": str(demo_dir / "demo.safetensors"), "data_root": str(demo_dir / "vtab-1k")}}))
    result = runner.invoke(app, ["analyze", "experts", "--from", str(folder), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Single-4" in result.stdout and "Sliced-4" in result.stdout, "the rich table"
    record = json.loads((folder / "analysis" / "experts-alore.json").read_text())  # what --format json prints
    own = runs["alore"][1]["test_acc"]
    acc = {r["name"]: r["test_acc"] for r in record["rows"]}
    assert record["experts"] == 4 and record["test_images"] == 400 and len(acc) == 12
    assert record["full_acc"] == own and acc["Increment-4"] == own, "all experts kept is the trained model"
    assert acc["Increment-1"] == acc["Single-1"] and acc["Sliced-4"] == acc["Increment-3"]
    assert any(acc[f"Single-{i}"] != own for i in range(1, 5)), acc
    assert (folder / "analysis" / "experts-alore.csv").read_text().startswith("subset,kind,experts,test_acc")


def test_attention_cli_png_is_images_by_columns_cells(runs, demo_dir, tmp_path) -> None:
    result = runner.invoke(app, ["analyze", "attention", "--from", str(runs["alore"][0]), "--images", "3",
                                 "--out", str(tmp_path), *inputs(demo_dir)])
    assert result.exit_code == 0, result.output
    width, height = Image.open(tmp_path / "attention-alore.png").size
    cell = 32 * math.ceil(MIN_CELL_PX / 32)  # demo images are 32 px, scaled up by a whole factor
    assert width % cell == 0 and (height - HEADER_PX) % cell == 0
    assert (width // cell, (height - HEADER_PX) // cell) == (1 + 4 + 1, 3), "columns: image, 4 singles, all; rows: 3"


def test_tsne_cli_two_methods_prints_finite_scores(runs, demo_dir, tmp_path) -> None:
    result = runner.invoke(app, ["analyze", "tsne", "--from", str(runs["alore"][0]), "--from", str(runs["lora"][0]),
                                 "--samples", "120", "--json", "--out", str(tmp_path), *inputs(demo_dir)])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert [s["method"] for s in scores] == ["alore", "lora"] and all(s["samples"] == 120 for s in scores)
    assert all(math.isfinite(s["silhouette"]) and math.isfinite(s["knn_acc"]) for s in scores)
    assert Image.open(tmp_path / "tsne-alore_lora.png").size[0] > Image.open(tmp_path / "tsne-alore_lora.png").size[1]


# ---- finding the cell in a sweep's store, and logging to its MLflow run -----------------------------

@pytest.fixture(scope="module")
def workdir(runs, demo_dir, tmp_path_factory):
    """A work folder as a finished sweep leaves it: a leaderboard row pointing at the cell's files and an MLflow run."""
    from alorectl import db
    from mlflow import MlflowClient

    work = tmp_path_factory.mktemp("work")
    tmp_path = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.create_experiment("alore/s1", artifact_location=(tmp_path / "artifacts").as_uri())
    # tagged as a sweep tags a cell's run: analyze logs only into the run of the cell it analysed
    run_id = client.create_run(experiment, tags={"backbone": "demo", "task": "digits", "method": "alore"}).info.run_id
    engine = db.connect(f"sqlite:///{work / 'leaderboard.db'}")
    sweep_id = db.upsert_sweep(engine, "s1", suite="vtab", status="done")
    for method, (folder, metrics) in runs.items():
        db.record_result(engine, sweep_id=sweep_id, backbone="demo", task="digits", method=method, suite="vtab",
                         test_acc_mean=metrics["test_acc"], seeds=[42], artifact_uri=str(folder),
                         mlflow_run_id=run_id if method == "alore" else None,
                         config={"weights": str(demo_dir / "demo.safetensors"), "data_root": str(demo_dir / "vtab-1k")})
    engine.dispose()
    return work, client, run_id


def test_tsne_of_a_sweeps_cells_is_logged_to_the_cells_mlflow_run(workdir, runs) -> None:
    work, client, run_id = workdir
    result = runner.invoke(app, ["analyze", "tsne", "--backbone", "demo", "--task", "digits", "--sweep", "s1",
                                 "--methods", "alore,lora", "--samples", "60", "--device", "cpu",
                                 "--workdir", str(work)])
    assert result.exit_code == 0, result.output
    assert "silhouette" in result.stdout and "lora" in result.stdout, "the rich table"
    assert (work / "analysis" / "demo" / "digits" / "tsne-alore_lora.png").is_file()
    logged = {a.path for a in client.list_artifacts(run_id, "analysis")}  # only the alore cell has a run
    assert logged == {"analysis/tsne-alore_lora.png", "analysis/tsne-alore_lora.json"}


def test_an_unreachable_mlflow_server_warns_once_and_keeps_the_png(runs, demo_dir, tmp_path) -> None:
    folder = tmp_path / "export"  # an export folder's card names the cell's MLflow run
    folder.mkdir()
    shutil.copy2(runs["alore"][0] / "adapter.safetensors", folder)
    (folder / "card.json").write_text(json.dumps({"mlflow_run_id": "0123456789abcdef0123456789abcdef"}))
    result = runner.invoke(app, ["analyze", "attention", "--from", str(folder), "--images", "1", *inputs(demo_dir),
                                 "--tracking-uri", "http://127.0.0.1:9"])  # nothing listens on the discard port
    assert result.exit_code == 0, result.output
    assert (folder / "analysis" / "attention-alore.png").is_file()
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "kept locally" in warnings[0], result.stderr


# ---- bad input: one line, exit 2 -------------------------------------------------------------------

@pytest.mark.parametrize("command,args,message", [
    ("experts", ["--from", "{lora}"], "needs an alore or alore_attn adapter; "),
    ("experts", ["--from", "{alore}", "--format", "xml"], "unknown format 'xml'; valid choices: csv, json, table"),
    ("experts", ["--backbone", "demo", "--task", "digits", "--method", "lora", "--workdir", "{work}"],
     "the expert analysis needs an alore or alore_attn adapter; "),
    ("experts", ["--backbone", "demo", "--task", "digits", "--workdir", "{empty}"], "no sweep has run in"),
    ("experts", ["--backbone", "demo", "--task", "digitz", "--workdir", "{work}"],
     "unknown result 'demo/digitz/alore' (backbone/task/method); valid choices: demo/digits/alore, demo/digits/lora"),
    ("attention", ["--from", "{alore}", "--images", "0"], "--images must be >= 1, got 0"),
    ("attention", ["--from", "{empty}"], "no adapter.safetensors in"),
    ("attention", ["--backbone", "demo", "--task", "digits", "--sweep", "s2", "--workdir", "{work}"],
     "unknown sweep 's2'; valid choices: s1"),
    ("tsne", ["--backbone", "demo", "--task", "digits", "--methods", "alore,lorra", "--workdir", "{work}"],
     "unknown method 'lorra'"),
    ("tsne", ["--backbone", "vit_q", "--task", "digits", "--workdir", "{work}"], "unknown backbone 'vit_q'"),
])
def test_bad_input_is_one_line_and_exit_2(workdir, runs, tmp_path, command, args, message) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    names = {"lora": runs["lora"][0], "alore": runs["alore"][0], "empty": empty, "work": workdir[0]}
    result = runner.invoke(app, ["analyze", command, *[a.format(**names) for a in args], "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (empty / "leaderboard.db").exists(), "a missing store is reported, not created"
