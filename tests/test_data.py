"""The data layer: task tables, split files, decode-once splits, check, demo, CLI.

Everything runs on data made here (the scikit-learn digits demo and tiny
handmade layouts); nothing touches the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import alore.data as data
from alore.data import decoded, demo
from alore.errors import DataError, UnknownChoiceError
from alorectl.cli import data as data_cli

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data.write_demo_dataset(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def digits_copy(demo_root: Path, tmp_path: Path) -> Path:
    """A writable VTAB root holding a copy of the demo's ``digits`` task."""
    root = tmp_path / "vtab"
    shutil.copytree(demo_root / "digits", root / "digits")
    return root


def solid_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_vtab_task(root: Path, task: str, splits: dict[str, list[tuple[str, int]]]) -> Path:
    """A handmade task: every listed image is a solid PNG; returns the task folder."""
    folder = root / task
    for split, rows in splits.items():
        for rel, label in rows:
            if not (folder / rel).exists():
                solid_png(folder / rel, (10 * label, 100, 200))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.txt").write_text("".join(f"{r} {lab}\n" for r, lab in rows))
    return folder


def small_vtab(root: Path, task: str = "mine", num_classes: int = 5) -> Path:
    train = [(f"images/t{i}.png", i % num_classes) for i in range(8)]
    val = [(f"images/v{i}.png", i % num_classes) for i in range(2)]
    test = [(f"images/e{i}.png", i % num_classes) for i in range(6)]
    return write_vtab_task(root, task, {"train800": train, "val200": val, "train800val200": train + val, "test": test})


def run_cli(*args: str):
    root = typer.Typer()
    root.add_typer(data_cli.app, name="data")
    return CliRunner().invoke(root, ["data", *map(str, args)])


# ---------------------------------------------------------------- task tables


def test_task_tables_follow_the_paper():
    assert len(data.VTAB_TASKS) == 19
    counts = [sum(t.group == g for t in data.VTAB_TASKS.values()) for g in data.VTAB_GROUPS]
    assert counts == [7, 4, 8]
    # Paper table 7, in the order.
    assert [t.num_classes for t in data.VTAB_TASKS.values()] == [
        100, 102, 47, 102, 37, 10, 397, 2, 10, 45, 5, 8, 6, 6, 4, 16, 16, 18, 9,
    ]
    assert [t.test_size for t in data.VTAB_TASKS.values()] == [
        10000, 6084, 1880, 6149, 3669, 26032, 21750, 32768, 5400, 6300, 42670,
        15000, 15000, 22735, 711, 73728, 73728, 12150, 12150,
    ]
    assert {n: t.num_classes for n, t in data.FGVC_DATASETS.items()} == {
        "cub": 200, "nabirds": 555, "oxford_flowers": 102, "stanford_dogs": 120, "stanford_cars": 196,
    }
    assert data.protocol_splits("vtab", "search") == data.Protocol(("train800",), "val200")
    assert data.protocol_splits("vtab", "final") == data.Protocol(("train800val200",), "test")
    assert data.protocol_splits("fgvc", "final") == data.Protocol(("train", "val"), "test")


def test_unknown_choices_name_the_value_and_the_choices(tmp_path: Path):
    with pytest.raises(UnknownChoiceError, match="suite 'imagenet'.*fgvc, vtab"):
        data.task_info("imagenet", "cifar")
    with pytest.raises(UnknownChoiceError, match="protocol 'dev'.*final, search"):
        data.protocol_splits("vtab", "dev")
    with pytest.raises(UnknownChoiceError, match="task 'nope'.*cifar"):
        data.task_info("vtab", "nope", tmp_path)


def test_task_info_infers_a_custom_task_from_disk(tmp_path: Path):
    small_vtab(tmp_path, "mine", num_classes=5)
    info = data.task_info("vtab", "mine", tmp_path)
    assert (info.num_classes, info.group, info.test_size) == (5, "Custom", 6)
    assert data.task_info("vtab", "cifar", tmp_path).num_classes == 100  # known: no disk access


# ---------------------------------------------------------------- split files


def test_split_file_problems_name_file_and_line(tmp_path: Path):
    folder = small_vtab(tmp_path)
    file = folder / "train800.txt"
    lines = file.read_text().splitlines()
    for bad, expected in [
        ("foo", f"{file} line 2: expected 'relative/path label', got 'foo'"),
        ("images/t1.png one", f"{file} line 2: label 'one' is not an integer"),
        ("images/t1.png -1", f"{file} line 2: label -1 is negative"),
        ("../../etc/passwd 1", f"{file} line 2: path '../../etc/passwd' leaves the dataset folder"),
        ("/etc/passwd 1", f"{file} line 2: path '/etc/passwd' leaves the dataset folder"),
    ]:
        file.write_text("\n".join([lines[0], bad, *lines[2:]]) + "\n")
        with pytest.raises(DataError) as err:
            data.read_split(tmp_path, "vtab", "mine", "train800")
        assert str(err.value).startswith(expected)
        assert "\n" not in str(err.value)

    file.unlink()
    with pytest.raises(DataError, match=f"{file}: split file missing"):
        data.read_split(tmp_path, "vtab", "mine", "train800")
    with pytest.raises(DataError, match="does not exist"):
        data.read_split(tmp_path / "nowhere", "vtab", "mine", "test")


def test_read_protocol_checks_label_range(tmp_path: Path):
    small_vtab(tmp_path)
    train, evaluation = data.read_protocol(tmp_path, "vtab", "mine", "final")
    assert (len(train), len(evaluation)) == (10, 6)
    assert all(p.is_absolute() and p.is_file() for p, _ in train + evaluation)
    with pytest.raises(DataError, match=r"train800val200.txt line 4: label 3 out of range \[0, 3\) \(and 1 more"):
        data.read_protocol(tmp_path, "vtab", "mine", "final", num_classes=3)


def test_fgvc_json_layout(tmp_path: Path):
    folder = tmp_path / "birds"
    ids = [3, 11, 7, 3, 11, 7]  # sparse class ids, as NABirds has
    train = {f"a/{i}.png": c for i, c in enumerate(ids)}
    for rel in [*train, "b/v.png", "b/t.png"]:
        solid_png(folder / "images" / rel, (50, 60, 70), size=(20, 12))
    (folder / "train.json").write_text(json.dumps(train))
    (folder / "val.json").write_text(json.dumps({"b/v.png": 7}))
    (folder / "test.json").write_text(json.dumps({"b/t.png": 11}))

    items = data.read_split(tmp_path, "fgvc", "birds", "train")
    assert [label for _, label in items] == [0, 2, 1, 0, 2, 1]  # 3→0, 7→1, 11→2
    assert items[0][0] == folder / "images" / "a/0.png"
    assert data.task_info("fgvc", "birds", tmp_path).num_classes == 3
    train_items, eval_items = data.read_protocol(tmp_path, "fgvc", "birds", "final")
    assert (len(train_items), eval_items[0][1]) == (7, 2)
    [report] = data.check_root(tmp_path, "fgvc")
    assert report.ok, report.problems

    (folder / "test.json").write_text(json.dumps({"b/t.png": 5, "../../x.png": 3}))
    problems = data.check_root(tmp_path, "fgvc")[0].problems
    assert any("test.json entry '../../x.png': path leaves the dataset folder" in p for p in problems)
    assert any("test.json entry 'b/t.png': class id 5 does not appear in train.json" in p for p in problems)
    (folder / "val.json").write_text('{"b/v.png": 7,')
    with pytest.raises(DataError, match=r"val.json line 1: not valid JSON"):
        data.read_split(tmp_path, "fgvc", "birds", "val")

    # FGVC storage: 256/224 larger square; crops to image_size for training and evaluation.
    pre = data.Preprocess.for_suite("fgvc", 16, MEAN, STD)
    split = data.DecodedSplit.decode(items, pre, workers=1)
    assert split.images.shape == (6, 3, 18, 18)
    x, y = next(split.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0), train_transform=True))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4,)
    x, _ = next(split.batches(6))
    expected = (data.center_crop(split.images, 16).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected)


def test_random_resized_crop_flip():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = data.random_resized_crop_flip(images, 8, torch.Generator().manual_seed(0), flip_p=0.0, **whole)
    torch.testing.assert_close(same, images)
    flipped = data.random_resized_crop_flip(images, 8, torch.Generator().manual_seed(0), flip_p=1.0, **whole)
    torch.testing.assert_close(flipped, images.flip(-1))

    batch = torch.randint(0, 256, (5, 3, 18, 18), dtype=torch.uint8)
    a = data.random_resized_crop_flip(batch, 16, torch.Generator().manual_seed(1))
    b = data.random_resized_crop_flip(batch, 16, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert a.min() >= 0 and a.max() <= 255


# ---------------------------------------------------------------- decoded splits


def test_batches_are_normalized_with_the_given_mean_and_std(tmp_path: Path):
    colors = [(255, 0, 0), (0, 128, 255), (10, 20, 30), (200, 200, 200), (0, 0, 0)]
    items = []
    for i, color in enumerate(colors):
        solid_png(tmp_path / f"{i}.png", color)
        items.append((tmp_path / f"{i}.png", i))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    split = data.DecodedSplit.decode(items, data.Preprocess(12, mean, std), workers=2)
    assert split.images.dtype == torch.uint8 and split.images.shape == (5, 3, 12, 12)

    seen = []
    for x, y in split.batches(2, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (3, 12, 12)
        for image, label in zip(x, y.tolist()):
            want = (torch.tensor(colors[label]) / 255 - torch.tensor(mean)) / torch.tensor(std)
            torch.testing.assert_close(image, want.view(3, 1, 1).expand(3, 12, 12))
            seen.append(label)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    def order(seed: int) -> list[list[int]]:
        return [y.tolist() for _, y in split.batches(2, shuffle=True, generator=torch.Generator().manual_seed(seed))]

    assert order(3) == order(3)
    assert [len(y) for _, y in split.batches(2, drop_last=True)] == [2, 2]


def test_decode_happens_once(digits_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    task = data.load_task(digits_copy, "vtab", "digits", "search", image_size=16, mean=MEAN, std=STD, device="cpu")
    assert (len(task.train), len(task.eval), task.num_classes) == (640, 160, 10)

    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    (digits_copy / "digits").rename(tmp_path / "gone")  # no image file is reachable any more
    for _ in range(2):
        labels = torch.cat([y for _, y in task.train.batches(64, shuffle=True, train_transform=True)])
        assert sorted(labels.tolist()) == sorted(task.train.labels.tolist())
        assert sum(len(y) for _, y in task.eval.batches(50)) == 160
    assert opened == []


def test_chunked_evaluation_covers_every_item_once_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for i in range(3):
        solid_png(tmp_path / f"{i}.png", (i * 40, 0, 0))
    items = [(tmp_path / f"{i % 3}.png", i) for i in range(23)]  # label = position, to check coverage
    pre = data.Preprocess(8, MEAN, STD)

    decodes = []
    real = decoded.decode_image
    monkeypatch.setattr(decoded, "decode_image", lambda p, pre: decodes.append(p) or real(p, pre))
    labels, consumed = [], 0
    for chunk in data.iter_chunks(items, pre, chunk_size=5, workers=1):
        assert len(chunk) <= 5
        consumed += len(chunk)
        assert len(decodes) == consumed  # lazy: nothing decoded ahead of the consumer
        labels += chunk.labels.tolist()
    assert labels == list(range(23))

    streamed = data.load_split(items, pre, stream_threshold=10, chunk_size=5, workers=1)
    assert isinstance(streamed, data.StreamedSplit) and len(streamed) == 23
    decodes.clear()
    batch_labels = [y.tolist() for _, y in streamed.to("cpu").batches(4)]
    assert sorted(sum(batch_labels, [])) == list(range(23)) and len(decodes) == 23
    assert max(len(b) for b in batch_labels) <= 4
    with pytest.raises(ValueError, match="evaluation"):
        next(streamed.batches(4, shuffle=True))
    assert isinstance(data.load_split(items, pre, stream_threshold=23, workers=1), data.DecodedSplit)


def test_large_eval_split_is_streamed_by_load_task(digits_copy: Path):
    task = data.load_task(digits_copy, "vtab", "digits", "final", image_size=8, mean=MEAN, std=STD,
                          stream_threshold=300, chunk_size=128)
    assert isinstance(task.eval, data.StreamedSplit) and len(task.train) == 800
    assert sum(len(y) for _, y in task.eval.batches(100)) == 400


# ---------------------------------------------------------------- demo dataset


def test_demo_layout_is_readable_and_disjoint_from_pretraining(demo_root: Path):
    assert sorted(p.name for p in demo_root.iterdir() if p.is_dir()) == sorted(data.DEMO_TASKS)
    for name, info in data.DEMO_TASKS.items():
        train, val = data.read_protocol(demo_root, "vtab", name, "search", num_classes=info.num_classes)
        trainval, test = data.read_protocol(demo_root, "vtab", name, "final", num_classes=info.num_classes)
        assert (len(train), len(val), len(trainval), len(test)) == (640, 160, 800, 400)
        assert len({label for _, label in trainval}) == info.num_classes
    reports = data.check_root(demo_root)
    assert [r.task for r in reports] == list(data.DEMO_TASKS) and all(r.ok for r in reports), reports

    images, labels = data.demo_pretrain_arrays()
    assert images.shape == (597, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == (597,)
    manifest = json.loads((demo_root / "demo.json").read_text())
    used = {int(p.stem) for p in (demo_root / "digits" / "images").iterdir()}
    assert len(used) == 1200 and not used & set(manifest["pretrain_indices"])
    first_used = np.asarray(Image.open(demo_root / "digits" / "images" / f"{min(used):04d}.png")).transpose(2, 0, 1)
    assert not any(np.array_equal(first_used, im) for im in images)


def test_write_demo_is_idempotent_and_never_half_written(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    stamp = (demo_root / "demo.json").stat().st_mtime_ns
    assert data.write_demo_dataset(demo_root.parent) == demo_root
    assert (demo_root / "demo.json").stat().st_mtime_ns == stamp

    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    real = demo._write_task
    monkeypatch.setattr(demo, "_write_task", failing)
    with pytest.raises(RuntimeError):
        data.write_demo_dataset(tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither vtab-1k nor a partial folder is left

    (tmp_path / "vtab-1k").mkdir()
    with pytest.raises(DataError, match="not an alore demo dataset"):
        data.write_demo_dataset(tmp_path)


# ---------------------------------------------------------------- check + CLI


def _missing_image(root: Path) -> list[str]:
    rel = (root / "digits" / "train800.txt").read_text().splitlines()[4].split()[0]
    (root / "digits" / rel).unlink()
    return [f"{root / 'digits' / rel}: image file missing (train800.txt line 5)"]


def _label_out_of_range(root: Path) -> list[str]:
    file = root / "digits" / "test.txt"
    lines = file.read_text().splitlines()
    lines[2] = lines[2].split()[0] + " 10"
    file.write_text("\n".join(lines) + "\n")
    return [f"{file} line 3: label 10 out of range [0, 10)"]


def _truncated_split(root: Path) -> list[str]:
    file = root / "digits" / "train800.txt"
    lines = file.read_text().splitlines(keepends=True)
    file.write_text("".join(lines[:99]) + lines[99][:8])  # cut off inside line 100
    return [
        f"{file} line 100: expected 'relative/path label', got {lines[99][:8]!r}",
        f"{file}: 99 entries, expected 640",
    ]


def _undecodable_image(root: Path) -> list[str]:
    rel = (root / "digits" / "test.txt").read_text().split()[0]
    image = root / "digits" / rel
    image.write_bytes(image.read_bytes()[:40])  # a PNG cut short
    return [f"{image}: cannot decode image", "(test.txt line 1)"]


@pytest.mark.parametrize("corrupt", [_missing_image, _label_out_of_range, _truncated_split, _undecodable_image])
def test_check_names_each_problem(digits_copy: Path, corrupt):
    expected = corrupt(digits_copy)
    [report] = data.check_root(digits_copy)
    assert report.status == "problem"
    text = "\n".join(report.problems)
    for fragment in expected:
        assert fragment in text

    result = run_cli("check", "--root", digits_copy)
    assert result.exit_code == 2, result.output  # a problem the user can fix: exit 2, as every user error
    for fragment in expected:
        assert fragment in result.stdout
    as_json = json.loads(run_cli("check", "--root", digits_copy, "--json").stdout)
    assert as_json[0]["status"] == "problem"


def test_check_and_cli_pass_on_the_demo(demo_root: Path):
    result = run_cli("check", "--root", demo_root)
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in data.DEMO_TASKS)
    result = run_cli("check", "--root", demo_root, "--tasks", "digits,digits_rot", "--json")
    assert result.exit_code == 0
    assert [r["task"] for r in json.loads(result.stdout)] == ["digits", "digits_rot"]


def test_check_reports_a_known_vtab_task_with_wrong_sizes(tmp_path: Path):
    small_vtab(tmp_path, "kitti", num_classes=4)
    [report] = data.check_root(tmp_path)
    assert any(p.endswith("train800.txt: 8 entries, expected 800") for p in report.problems)
    assert any(p.endswith("test.txt: 6 entries, expected 711") for p in report.problems)


def test_check_catches_leaks_and_inconsistent_trainval(tmp_path: Path):
    folder = small_vtab(tmp_path)
    lines = (folder / "train800val200.txt").read_text().splitlines()
    (folder / "train800val200.txt").write_text("\n".join(lines[:-1]) + "\n")
    with (folder / "test.txt").open("a") as f:
        f.write("images/t0.png 0\n")
    [report] = data.check_root(tmp_path)
    assert report.num_classes == 5 and report.group == "Custom"
    assert any("not train800 + val200 (0 entries only here, 1 missing)" in p for p in report.problems)
    assert any("1 images in both train800val200.txt and test.txt" in p for p in report.problems)


def test_cli_demo_writes_the_dataset_and_keeps_the_demo_backbone_it_finds(tmp_path: Path, demo_dir: Path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy2(demo_dir / "demo.safetensors", out / "demo.safetensors")  # pre-training it again takes minutes
    before = (out / "demo.safetensors").stat().st_mtime_ns
    result = run_cli("demo", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"demo dataset: {out / 'vtab-1k'}" in result.stdout
    assert f"demo backbone weights: {out / 'demo.safetensors'}" in result.stdout
    assert (out / "vtab-1k" / "digits_loc" / "test.txt").is_file()
    assert (out / "demo.safetensors").stat().st_mtime_ns == before
