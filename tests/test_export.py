"""`alorectl export` on a finished result, checked the way a timm user would use it; read-only commands.

The result is made without Ray: one ``fit`` of the demo backbone, its run
files, and the rows a sweep would record, written through ``db``'s public
functions into the work folder's default store.

The images are the demo's ``digits`` stretched to 64×32: on the demo's own
square 32×32 files a straight resize and timm's centre crop are the same
identity, and the test could not tell whether the card describes the
preprocessing or not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from typer.testing import CliRunner

import alorectl.results.export
from alorectl import db
import alore
from attacks import write_result
from alore.api import load_adapter
from alore.artifacts import write_run_files
from alore.train import TrainConfig, fit
from alorectl.cli import app
from alorectl.defaults import db_url

runner = CliRunner()
STRETCHED = (64, 32)  # width, height


def stretched_digits(demo_dir: Path, root: Path) -> Path:
    """The demo's ``digits`` task with every image stretched to 64×32 (nearest: no new pixel values)."""
    source, target = demo_dir / "vtab-1k" / "digits", root / "digits"
    for split in source.glob("*.txt"):
        (target / split.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(split, target / split.name)
    for image in (source / "images").iterdir():
        (target / "images").mkdir(exist_ok=True)
        with Image.open(image) as im:
            im.convert("RGB").resize(STRETCHED, Image.Resampling.NEAREST).save(target / "images" / image.name)
    return root


@pytest.fixture(scope="module")
def finished(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A work folder whose leaderboard holds one finished demo/digits/alore result (protocol "final")."""
    root = tmp_path_factory.mktemp("export")
    data = stretched_digits(demo_dir, root / "data")
    config = TrainConfig(backbone="demo", weights=str(demo_dir / "demo.safetensors"), task="digits",
                         data_root=str(data), method="alore", protocol="final", lr=0.01, weight_decay=0.001,
                         epochs=6, warmup_epochs=1, batch_size=32, device="cpu")
    keep: dict = {}
    metrics = fit(config, keep=keep)
    run_dir = root / "runs" / "digits-alore"
    write_run_files(run_dir, metrics, keep["model"], keep["data"])

    work = root / "work"
    engine = db.connect(db_url(work))  # the store `alorectl` reads by default
    sweep_id = db.upsert_sweep(engine, "handmade", preset="demo", suite="vtab", status="done")
    db.upsert_cell(engine, sweep_id, "demo", "digits", "alore", status="done")
    db.record_result(engine, sweep_id=sweep_id, backbone="demo", task="digits", method="alore", suite="vtab",
                     test_acc_mean=metrics["test_acc"], seeds=[config.seed], val_acc=None,
                     trainable_params=metrics["trainable_params"], config=config.to_dict(), epochs=config.epochs,
                     artifact_uri=str(run_dir))
    engine.dispose()
    return {"work": work, "data": data, "run_dir": run_dir, "metrics": metrics, "sweep_id": sweep_id}


def export(finished: dict, out: Path, *args: str):
    return runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "alore",
                               "--out", str(out), "--workdir", str(finished["work"]), *args])


def test_timm_eval_transform_reproduces_the_cards_test_accuracy(finished, tmp_path, monkeypatch) -> None:
    out = tmp_path / "best"
    result = export(finished, out)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["merged"] and card["test_acc"] == finished["metrics"]["test_acc"] == card["weights_test_acc"]
    assert card["preprocessing"] == {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 1.0,
                                     "crop_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

    # Plain timm, nothing of alore: the card's own load line, run where the export lies.
    monkeypatch.chdir(out)
    model = eval(card["load"], {"timm": timm}).eval()  # noqa: S307  (the card is this test's own output)
    from_fields = timm.create_model(card["timm_name"], pretrained=True, num_classes=card["num_classes"],
                                    pretrained_cfg_overlay=card["pretrained_cfg_overlay"], **card["timm_kwargs"])
    same = lambda cfg: json.loads(json.dumps(cfg))  # noqa: E731  (the card's JSON lists are timm's tuples)
    assert same(from_fields.pretrained_cfg) == same(model.pretrained_cfg)  # the card's dict says what its line says
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

    task = finished["data"] / "digits"
    lines = [line.split() for line in (task / "test.txt").read_text().splitlines() if line.strip()]
    correct = 0
    with torch.no_grad():
        for start in range(0, len(lines), 100):
            batch = lines[start : start + 100]
            images = []
            for path, _ in batch:
                with Image.open(task / path) as im:
                    images.append(transform(im.convert("RGB")))
            predicted = model(torch.stack(images)).argmax(-1)
            correct += int((predicted == torch.tensor([int(label) for _, label in batch])).sum())
    accuracy = 100.0 * correct / len(lines)
    one_image = 100.0 / len(lines)
    # Merged and adapted outputs agree to 1e-4 (relative), so at most a near-tie may flip.
    assert abs(accuracy - card["test_acc"]) <= one_image + 1e-9, (accuracy, card["test_acc"])
    assert card["test_acc"] > 50.0, "a trained model, or the comparison above proves little"


def test_the_card_load_line_matches_its_fields(finished, tmp_path) -> None:
    out = tmp_path / "x"
    assert export(finished, out).exit_code == 0
    card = json.loads((out / "card.json").read_text())
    overlay = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in card["pretrained_cfg_overlay"].items())
    assert f"pretrained_cfg_overlay=dict({overlay})" in card["load"]
    assert card["pretrained_cfg_overlay"]["file"] == str((out / "model.safetensors").resolve())  # from anywhere
    assert card["sha256"].keys() == {"model.safetensors", "adapter.safetensors"}


def test_force_exports_into_a_non_empty_out_and_keeps_the_users_files(finished, tmp_path) -> None:
    # Without --force the export is refused: a row of tests/test_cli_bad_input.py.
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    forced = export(finished, out, "--force")
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "card.json", "model.safetensors",
                                                     "notes.txt"]  # the user's own file stays
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_forcing_an_unmerged_export_over_a_merged_one_leaves_no_stale_model(finished, tmp_path) -> None:
    # A run without merged weights: VPT's (an untrained one: the export checks the files, not their accuracy).
    unmerged = tmp_path / "run-vpt"
    write_result(unmerged, method="vpt")
    engine = db.connect(db_url(finished["work"]))
    db.record_result(engine, sweep_id=finished["sweep_id"], backbone="demo", task="digits", method="vpt",
                     suite="vtab", test_acc_mean=50.0, seeds=[42], artifact_uri=str(unmerged))
    engine.dispose()
    out = tmp_path / "out"
    assert export(finished, out).exit_code == 0
    again = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "vpt", "--out",
                                str(out), "--workdir", str(finished["work"]), "--force"])
    assert again.exit_code == 0, again.output
    card = json.loads((out / "card.json").read_text())
    assert card["method"] == "vpt" and card["merged"] is False and card["pretrained_cfg_overlay"] is None
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "card.json"]


def test_a_failed_export_writes_nothing(finished, tmp_path, monkeypatch) -> None:
    # The export dies with an I/O error after both weights files were copied and checked (the disk fails while
    # the card is written; a symlinked file, the old way to get here, is now refused before: the bad-input table).
    broken = tmp_path / "run-broken"
    write_result(broken, method="lora")
    engine = db.connect(db_url(finished["work"]))
    db.record_result(engine, sweep_id=finished["sweep_id"], backbone="demo", task="digits", method="lora",
                     suite="vtab", test_acc_mean=50.0, seeds=[42], artifact_uri=str(broken))
    engine.dispose()
    parent = tmp_path / "exports"
    earlier = parent / "earlier"
    assert export(finished, earlier).exit_code == 0
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}

    def card_fails(row, source, stage, *args):
        assert sorted(p.name for p in stage.iterdir()) == ["adapter.safetensors", "model.safetensors"]
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(alorectl.results.export, "make_card", card_fails)

    for out, force in ((parent / "new", []), (earlier, ["--force"])):
        result = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", "lora",
                                     "--out", str(out), "--workdir", str(finished["work"]), *force])
        assert result.exit_code != 0 and isinstance(result.exception, OSError), result.output
        assert sorted(p.name for p in parent.iterdir()) == ["earlier"], "no new folder, no staging folder"
        assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before, "the earlier export is untouched"


def test_tracking_uri_flag_is_spelled_like_sweeps(finished, tmp_path) -> None:
    out = tmp_path / "t"
    result = export(finished, out, "--tracking-uri", "http://alice:s3cret@mlflow:5000")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "card.json").read_text())["mlflow_tracking_uri"] == "http://alice:***@mlflow:5000"
    board = runner.invoke(app, ["leaderboard", "--backbone", "demo", "--workdir", str(finished["work"]),
                                "--tracking-uri", "http://mlflow:5000", "--format", "json"])
    assert board.exit_code == 0, board.output


@pytest.fixture(scope="module")
def vpt_result(finished, demo_dir: Path) -> None:
    """A VPT result (a method that cannot merge) beside the ALoRE one: one epoch, its real run files."""
    config = TrainConfig(backbone="demo", weights=str(demo_dir / "demo.safetensors"), task="digits",
                         data_root=str(finished["data"]), method="vpt", method_options={"prompts": 4},
                         protocol="final", lr=0.01, epochs=1, warmup_epochs=0, batch_size=32, device="cpu")
    keep: dict = {}
    metrics = fit(config, keep=keep)
    run_dir = finished["run_dir"].parent / "digits-vpt"
    write_run_files(run_dir, metrics, keep["model"], keep["data"])
    engine = db.connect(db_url(finished["work"]))
    # As a sweep records it: the run settings and the searched values, flat (no "method_options" key).
    db.record_result(engine, sweep_id=finished["sweep_id"], backbone="demo", task="digits", method="vpt",
                     suite="vtab", test_acc_mean=metrics["test_acc"], seeds=[42], val_acc=None,
                     trainable_params=metrics["trainable_params"], epochs=1, artifact_uri=str(run_dir),
                     config={"suite": "vtab", "weights": config.weights, "epochs": 1, "lr": 0.01, "prompts": 4})
    engine.dispose()


SNIPPET_PROBE = """
import json, sys
from PIL import Image
import torch
card = json.load(open(sys.argv[1]))
exec(card["snippet"])
image = Image.new("RGB", (64, 32), (200, 30, 90))
with torch.no_grad():
    print(json.dumps(model(transform(image)[None]).tolist()))
"""


@pytest.mark.parametrize("method", ["alore", "vpt"])
def test_the_cards_snippet_runs_from_another_folder(finished, vpt_result, demo_dir, tmp_path, method) -> None:
    """The card's code, copied into a fresh Python in an unrelated working directory, gives the trained model."""
    out = tmp_path / "exports" / method
    done = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", method, "--out",
                               str(out), "--workdir", str(finished["work"])])
    assert done.exit_code == 0, done.output
    card = json.loads((out / "card.json").read_text())
    assert card["merged"] is (method == "alore")
    assert ("timm.create_model(" if method == "alore" else "alore.load_export(") in card["load"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run([sys.executable, "-c", SNIPPET_PROBE, str(out / "card.json")], cwd=elsewhere,
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    logits = torch.tensor(json.loads(probe.stdout.strip().splitlines()[-1]))

    # The reference, rebuilt by hand from the run's own files: backbone + method + adapter, alore's transform.
    source = finished["run_dir"] if method == "alore" else finished["run_dir"].parent / "digits-vpt"
    model = alore.create_backbone("demo", card["num_classes"], weights=str(demo_dir / "demo.safetensors"))
    alore.apply(model, method, **card["method_options"])
    load_adapter(model, source / "adapter.safetensors")
    transform = timm.data.create_transform(**card["preprocessing"])
    with torch.no_grad():
        expected = model.eval()(transform(Image.new("RGB", (64, 32), (200, 30, 90)))[None])
    assert logits.shape == expected.shape
    assert (logits - expected).norm() <= 1e-4 * expected.norm(), (logits, expected)
