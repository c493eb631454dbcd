"""Backbones: names, local weight files (no pickle), clear errors, normalization from timm."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import alore
from alore.backbones import data_config
from alore.errors import UnknownChoiceError, WeightsError


class Payload:
    """Unpickling this runs code (it touches a file): exactly what weights_only=True must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pretrained_file(tmp_path, suffix: str, classes: int = 10, name: str = "vit_test") -> tuple:
    source = alore.create_backbone(name, classes)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    return source, path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_file_loads_everything_but_the_head(tmp_path, suffix: str) -> None:
    source, path = pretrained_file(tmp_path, suffix, classes=10)
    model = alore.create_backbone("vit_test", 3, weights=path)
    assert model.head.out_features == 3
    for key, value in source.state_dict().items():
        if not key.startswith("head"):
            assert torch.equal(model.state_dict()[key], value), key


def test_same_head_size_loads_the_head_too(tmp_path) -> None:
    source, path = pretrained_file(tmp_path, ".safetensors", classes=3)
    model = alore.create_backbone("vit_test", 3, weights=path)
    assert torch.equal(model.head.weight, source.head.weight)


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    marker = tmp_path / "ran"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": Payload(str(marker))}, f)
    with pytest.raises(WeightsError, match="refused weights file .*evil.pth: it holds Python objects"):
        alore.create_backbone("vit_test", 3, weights=path)
    assert not marker.exists(), "the pickle's code must never run"


def test_weights_of_another_architecture_are_rejected_by_name(tmp_path) -> None:
    _, path = pretrained_file(tmp_path, ".safetensors", name="swin_test")
    with pytest.raises(WeightsError, match=r"weights file .*weights.safetensors does not fit backbone 'test_vit': missing"):
        alore.create_backbone("vit_test", 3, weights=path)


def test_a_file_missing_backbone_keys_is_rejected(tmp_path) -> None:
    source = alore.create_backbone("vit_test", 3)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.5.")}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=r"missing blocks\.5\."):
        alore.create_backbone("vit_test", 3, weights=path)


def test_missing_file_and_unknown_suffix(tmp_path) -> None:
    with pytest.raises(WeightsError, match="weights file not found: .*nope.safetensors"):
        alore.create_backbone("vit_test", 3, weights=tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.txt"
    odd.write_text("x")
    with pytest.raises(UnknownChoiceError, match=r"unknown weights file type '.txt'; valid choices: .bin, .npz, .pt"):
        alore.create_backbone("vit_test", 3, weights=odd)


@pytest.mark.parametrize("name,content,message", [
    ("text.pth", b"these are not weights\n", "is not a valid PyTorch .pth weights file"),
    ("cut.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{", "is not a valid safetensors weights file"),
    ("bad.npz", b"\x93NUMPY garbage", "is not a valid numpy .npz weights file"),
])
def test_a_broken_file_is_named_as_not_a_valid_file_of_its_format(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=f"{path.name} {message}") as err:
        alore.create_backbone("vit_test", 3, weights=path)
    assert "\n" not in str(err.value)


def test_no_network_says_to_pass_a_local_file(tmp_path, monkeypatch) -> None:
    import huggingface_hub.constants

    # Offline with an empty hub cache, as a cluster without internet access would see it.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"no pretrained weights for vit_test: timm's 'test_vit.r160_in1k' is not in "
                                           r"the local hub cache .*\(offline\); pass --weights FILE"):
        alore.create_backbone("vit_test", 3, weights="timm")


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224./../x", "../vit_b", "vit_b/..", "a.b.c", "", "vit b"])
def test_unsafe_backbone_names_are_refused_before_any_path_is_built(name: str) -> None:
    with pytest.raises(alore.AloreError, match="invalid backbone name .*: use a short name .*one optional '.tag'"):
        alore.create_backbone(name, 3, device="meta")


def test_a_tag_must_be_one_of_the_architectures_tags() -> None:
    assert alore.state.of(alore.create_backbone("test_vit.r160_in1k", 3)).backbone.timm_name == "test_vit.r160_in1k"
    with pytest.raises(UnknownChoiceError, match="unknown pretrained tag for test_vit 'bogus'; valid choices: r160_in1k"):
        alore.create_backbone("test_vit.bogus", 3)


def test_unknown_backbone_lists_the_names() -> None:
    with pytest.raises(UnknownChoiceError, match="unknown backbone 'vit_q'; valid choices: convnext_b, .*vit_b, vit_h, vit_l"):
        alore.create_backbone("vit_q", 3)


def test_any_timm_model_name_works() -> None:
    model = alore.create_backbone("test_vit2", 4)
    assert alore.state.of(model).backbone.timm_name == "test_vit2"


def test_normalization_comes_from_the_pretrained_config() -> None:
    vit = alore.create_backbone("vit_b", 10, device="meta")
    assert data_config(vit) == {"image_size": 224, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    swin = alore.create_backbone("swin_b", 10, device="meta")
    assert data_config(swin)["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert data_config(alore.create_backbone("demo", 10))["image_size"] == 32
