"""No silently random backbone: real backbones get timm's pretrained weights (hub cache) or refuse in one line.

The hub cache here is a real huggingface_hub cache layout planted in a temporary
folder (``models--timm--<tag>/{refs/main, snapshots/<commit>/model.safetensors}``),
read by timm exactly as it reads a user's ``~/.cache/huggingface``; nothing is
downloaded (conftest sets HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import alore
from alore import backbones
from alore.errors import WeightsError
from alore.train import TrainConfig, fit
from alorectl.cli import app

runner = CliRunner()
TAG = "test_vit.r160_in1k"  # timm's tiny real ViT and its pretrained tag (repo timm/test_vit.r160_in1k)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, offline huggingface hub cache. huggingface_hub reads HF_HOME/HF_HUB_OFFLINE once at import
    (constants.py), and looks ``constants.HF_HUB_CACHE`` up at each call: so the constants are what to point."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def plant(cache, tag: str = TAG) -> dict[str, torch.Tensor]:
    """Put weights for ``tag`` in the cache as the hub would have left them after a download."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in timm.create_model(tag.split(".")[0]).state_dict().items()}
    repo = cache / f"models--timm--{tag}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return state


def test_names_and_tags() -> None:
    assert all(backbones.is_small_test(n) for n in ("vit_test", "swin_test", "convnext_test", "demo"))
    assert not any(backbones.is_small_test(n) for n in ("vit_b", "vit_l", "vit_h", "swin_b", "convnext_b", "test_vit"))
    assert backbones.pretrained_tag("vit_b") == "vit_base_patch16_224.orig_in21k"
    assert backbones.pretrained_tag("test_vit") == TAG  # timm's default tag for a bare name
    model = alore.create_backbone("vit_test", 3, weights=backbones.RANDOM)
    assert model.head.out_features == 3


def test_offline_without_cache_is_one_line_naming_tag_and_flag(hub_cache, tmp_path) -> None:
    dest = tmp_path / "weights"
    with pytest.raises(WeightsError) as err:
        backbones.fetch_pretrained("vit_b", dest)
    message = str(err.value)
    assert message.startswith("no pretrained weights for vit_b: timm's 'vit_base_patch16_224.orig_in21k' is not in "
                              "the local hub cache and cannot be downloaded (offline)")
    assert "--weights vit_b=FILE" in message and "--weights vit_b=random" in message and "\n" not in message
    assert not dest.exists(), "nothing written when there is nothing to write"


def test_found_in_the_local_hub_cache(hub_cache, tmp_path) -> None:
    planted = plant(hub_cache)
    dest = tmp_path / "weights"
    path = backbones.fetch_pretrained("test_vit", dest)
    assert path == dest / f"{TAG}.safetensors"
    fetched = load_file(str(path))
    assert fetched.keys() == planted.keys() and all(torch.equal(fetched[k], v) for k, v in planted.items())
    assert [p.name for p in dest.iterdir()] == [path.name], "no temporary file left behind"

    # The file is the answer from now on: no hub, no model build.
    for item in sorted(hub_cache.rglob("*"), reverse=True):
        item.unlink() if item.is_file() else item.rmdir()
    assert backbones.fetch_pretrained("test_vit", dest) == path

    # And it loads through the normal local-weights path (its 1000-class head is dropped).
    model = alore.create_backbone("test_vit", 5, weights=path)
    assert model.head.out_features == 5
    assert all(torch.equal(model.state_dict()[k], v) for k, v in planted.items() if not k.startswith("head"))


def test_fit_refuses_a_real_backbone_without_a_weights_choice(demo_dir) -> None:
    config = TrainConfig(backbone="test_vit", weights=None, task="digits", data_root=str(demo_dir / "vtab-1k"),
                         method="linear", epochs=1, device="cpu")
    with pytest.raises(WeightsError, match="no weights chosen for backbone 'test_vit': .*'random' on purpose"):
        fit(config)


def train_args(demo_dir, out, *extra: str) -> list[str]:
    return ["train", "--task", "digits", "--data-root", str(demo_dir / "vtab-1k"), "--method", "linear",
            "--epochs", "1", "--protocol", "search", "--device", "cpu", "--out", str(out), "--json", *extra]


def test_train_small_backbone_says_it_is_random(demo_dir, tmp_path) -> None:
    result = runner.invoke(app, train_args(demo_dir, tmp_path / "run", "--backbone", "vit_test"))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ("vit_test: random initialisation (small test backbone); "
                                     "pass --weights FILE for pretrained weights")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["weights"] == "random"


def test_train_real_backbone_uses_timm_pretrained_from_the_cache(demo_dir, hub_cache, tmp_path, monkeypatch) -> None:
    planted = plant(hub_cache)
    monkeypatch.setenv("ALORE_WEIGHTS_DIR", str(tmp_path / "weights"))
    result = runner.invoke(app, train_args(demo_dir, tmp_path / "run", "--backbone", "test_vit"))
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["weights"] == f"timm:{TAG}"
    assert metrics["weights_file"] == str(tmp_path / "weights" / f"{TAG}.safetensors")
    assert torch.equal(load_file(metrics["weights_file"])["blocks.0.attn.qkv.weight"],
                       planted["blocks.0.attn.qkv.weight"])


def test_train_random_on_purpose_is_recorded(demo_dir, hub_cache, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ALORE_WEIGHTS_DIR", str(tmp_path / "weights"))
    result = runner.invoke(app, train_args(demo_dir, tmp_path / "run", "--backbone", "test_vit",
                                           "--weights", "random"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["weights"] == "random"
    assert not (tmp_path / "weights").exists(), "random on purpose fetches nothing"
