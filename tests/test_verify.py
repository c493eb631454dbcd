"""A received export folder is checked file by file before ``alore.load_export`` builds anything from it
(:mod:`alore.verify`): no links, bounded sizes, the tensors its card and adapter imply, the sha256 it records.

The CLI's refusals of the same attacks (``alorectl export``, ``alorectl analyze``) are rows of the bad-input
table (tests/test_cli_bad_input.py). Here the exports are real ``alorectl export`` folders of untrained demo
adapters (:func:`attacks.write_result`): only the training is left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from attacks import huge_header, huge_tensor_claim, rewrite, write_result
from typer.testing import CliRunner

import alore
from alore import verify
from alore.errors import WeightsError
from alorectl import db
from alorectl.cli import app
from alorectl.defaults import db_url

runner = CliRunner()


def exported(root: Path, method: str) -> Path:
    """``alorectl export`` of a recorded demo/digits/<method> result: the export folder."""
    work = root / "work"
    write_result(root / "run", method=method)
    engine = db.connect(db_url(work))
    try:
        sweep = db.upsert_sweep(engine, "handmade", preset="demo", suite="vtab", status="done")
        db.record_result(engine, sweep_id=sweep, backbone="demo", task="digits", method=method, suite="vtab",
                         test_acc_mean=50.0, seeds=[42], artifact_uri=str(root / "run"),
                         config={"weights": "random"})
    finally:
        engine.dispose()
    out = root / "export"
    done = runner.invoke(app, ["export", "--backbone", "demo", "--task", "digits", "--method", method,
                               "--out", str(out), "--workdir", str(work)])
    assert done.exit_code == 0, done.output
    return out


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A merged export (alore) and one that cannot merge (vpt)."""
    return {m: exported(tmp_path_factory.mktemp(m), m) for m in ("alore", "vpt")}


@pytest.fixture
def received(exports, tmp_path):
    """A copy of an export, as received from someone else, for a test to tamper with."""
    def copy(method: str) -> Path:
        target = tmp_path / f"received-{method}"
        shutil.copytree(exports[method], target)
        return target
    return copy


def edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / "card.json").read_text())
    card.update(changes)
    (folder / "card.json").write_text(json.dumps(card))


def refused(folder: Path, *fragments: str) -> None:
    with pytest.raises(WeightsError) as caught:
        alore.load_export(folder)
    message = str(caught.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_untouched_exports_load(exports) -> None:
    for method, folder in exports.items():
        model = alore.load_export(folder)
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10), method


def test_a_symlinked_weights_file_is_refused(received, tmp_path) -> None:
    folder = received("alore")
    elsewhere = tmp_path / "elsewhere.safetensors"
    (folder / "model.safetensors").rename(elsewhere)
    (folder / "model.safetensors").symlink_to(elsewhere)
    refused(folder, "model.safetensors: it is a symbolic link", str(elsewhere))


def test_a_symlinked_card_is_refused(received, tmp_path) -> None:
    folder = received("vpt")
    (folder / "card.json").rename(tmp_path / "card.json")
    (folder / "card.json").symlink_to(tmp_path / "card.json")
    refused(folder, "card.json: it is a symbolic link")


def test_weights_of_other_shapes_than_the_card_implies_are_refused(received) -> None:
    folder = received("alore")
    edit_card(folder, num_classes=11)  # the card claims an 11-class head; adapter and weights have 10
    refused(folder, "card.json: its num_classes 11 is not the adapter's 10")


def test_a_card_that_names_another_architecture_is_refused(received) -> None:
    folder = received("alore")  # would build a 10**6-wide model before timm noticed the weights do not fit
    edit_card(folder, timm_kwargs={"embed_dim": 1_000_000})
    refused(folder, "card.json: its timm model", "is not backbone demo's")


def test_a_header_claiming_huge_tensors_is_refused_before_reading_them(received) -> None:
    folder = received("vpt")
    huge_tensor_claim(folder / "adapter.safetensors")
    refused(folder, "adapter.safetensors: tensor 'w' claims 4398046511104 bytes")


def test_a_huge_header_is_refused_before_reading_it(received) -> None:
    folder = received("alore")
    huge_header(folder / "model.safetensors")
    refused(folder, "model.safetensors: its safetensors header claims 1099511627776 bytes (at most")


def test_adapter_metadata_that_does_not_match_its_tensors_is_refused_before_building(received) -> None:
    folder = received("vpt")

    def claim(tensors: dict, metadata: dict) -> None:  # 10**8 prompts: gigabytes, were the model built
        method = json.loads(metadata["method"])
        method["config"]["prompts"] = 100_000_000
        metadata["method"] = json.dumps(method)

    rewrite(folder / "adapter.safetensors", claim)
    refused(folder, "adapter.safetensors: its tensors are not those of its metadata", "shape mismatch")


def test_a_replaced_weights_file_is_refused_by_its_sha256(received, tmp_path) -> None:
    folder = received("alore")
    write_result(tmp_path / "other")  # weights of the same shapes, other values: someone else's model
    other = tmp_path / "other" / "merged.safetensors"

    def nudge(tensors: dict, metadata: dict) -> None:  # a random demo backbone can repeat the export's values
        name = next(iter(tensors))
        tensors[name] = tensors[name] + 1.0

    rewrite(other, nudge)
    shutil.copy(other, folder / "model.safetensors")
    refused(folder, "model.safetensors: its sha256 is not the one card.json records")


def test_tensors_that_overlap_or_leave_bytes_over_are_refused(tmp_path) -> None:
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(WeightsError, match="overlap or leave gaps"):
        verify.header(path)
    one = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(len(one).to_bytes(8, "little") + one + b"\0" * 4096)
    with pytest.raises(WeightsError, match="4088 bytes after its last tensor"):
        verify.header(path)
