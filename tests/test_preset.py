"""Presets are validated whole before anything runs; names follow one safe rule; each method searches what it uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from alore.errors import ConfigError, UnknownChoiceError
from alorectl.sweep import preset as presets
from alorectl.security import check_name, inside

GOOD = {
    "suite": "vtab",
    "data_root": "data/vtab-1k",
    "backbones": ["demo"],
    "tasks": ["digits"],
    "methods": ["alore", "ssf", "vpt"],
    "search": {"algorithm": "optuna", "trials": 2, "scheduler": "fifo"},
    "space": {"lr": [0.01, 0.005], "weight_decay": [0.001], "dropout": [0.1, 0.0]},
    "method_space": {"vpt": {"prompts": [5, 10]}},
    "train": {"epochs": 5, "warmup_epochs": 1, "batch_size": 32},
    "final": {"seeds": [42]},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def write(tmp_path, data: dict, name: str = "p") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def with_(**sections) -> dict:
    """GOOD with some top-level keys replaced, or ``section__key=value`` set inside a section."""
    data = json.loads(json.dumps(GOOD))
    for key, value in sections.items():
        if "__" in key:
            section, sub = key.split("__")
            data[section][sub] = value
        else:
            data[key] = value
    return data


BAD = [  # (id, preset, substrings the one line must hold)
    ("batch_size 0", with_(train__batch_size=0), ["train.batch_size", "got 0"]),
    ("batch_size float", with_(train__batch_size=3.5), ["train.batch_size", "integer", "3.5"]),
    ("vpt prompts -10", with_(method_space={"vpt": {"prompts": [5, -10]}}), ["vpt", "prompts=-10", "must be >= 1"]),
    ("vpt prompts 5.5", with_(method_space={"vpt": {"prompts": [5.5]}}), ["method_space.vpt.prompts", "5.5", "integer"]),
    ("repadapter combo", with_(method_space={"repadapter": {"bottleneck": [8, 6], "groups": [4]}}),
     ["repadapter with", "bottleneck=6, groups=4"]),
    ("ssf dropout", with_(method_space={"ssf": {"dropout": [0.1, 0.0]}}), ["option of ssf", "'dropout'", "init_std"]),
    ("trials abc", with_(search__trials="abc"), ["search.trials", "'abc'", "valid integer"]),
    ("trials 0", with_(search__trials=0), ["search.trials", "got 0"]),
    ("cpus x", with_(resources__cpus_per_trial="x"), ["resources.cpus_per_trial", "'x'", "valid number"]),
    ("gpus -1", with_(resources__gpus_per_trial=-1), ["resources.gpus_per_trial", "-1", "greater than or equal to 0"]),
    ("search 5", with_(search=5), ["search must be a mapping", "got 5"]),
    ("train list", with_(train=[1]), ["train must be a mapping", "got [1]"]),
    ("final str", with_(final="x"), ["final must be a mapping", "'x'"]),
    ("resources list", with_(resources=[2]), ["resources must be a mapping", "[2]"]),
    ("method_space.vpt list", with_(method_space={"vpt": [5]}), ["method_space.vpt must be a mapping", "[5]"]),
    ("train typo", with_(train__epoch=5), ["'epoch'", "epochs"]),
    ("epochs 0", with_(train__epochs=0), ["train.epochs", "got 0"]),
    ("warmup > epochs", with_(train__warmup_epochs=6), ["train.warmup_epochs", "[0, 5]", "got 6"]),
    ("seeds str", with_(final__seeds=["a"]), ["final.seeds", "'a'"]),
    ("seeds repeated", with_(final__seeds=[42, 42]), ["final.seeds has a repeated seed", "[42, 42]"]),
    ("top-level typo", with_(methodz=["alore"]), ["unknown key 'methodz'", "method_space, methods"]),
    ("lr -1", with_(space={"lr": [-1.0]}), ["bad grid value -1.0 for lr"]),
    ("dropout 1.5", with_(space={"dropout": [1.5]}), ["space.dropout", "1.5", "[0, 1)"]),
    ("backbone ..", with_(backbones=[".."]), ["bad backbone name '..'"]),
    ("backbone escape", with_(backbones=["vit_tiny_patch16_224./../x"]),
     ["bad backbone name 'vit_tiny_patch16_224./../x'"]),
    ("task ../t", with_(tasks=["../t"]), ["bad task name '../t'"]),
    ("method a/b", with_(methods=["a/b"]), ["bad method name 'a/b'"]),
    ("method unknown", with_(methods=["alora"]), ["unknown method in preset", "'alora'"]),
    ("weights key", with_(weights={"../w": "x.safetensors"}), ["bad backbone name '../w'"]),
]


def test_a_key_given_twice_is_refused_not_silently_overwritten(tmp_path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "tasks: [digits_rot]\n")  # PyYAML alone keeps the last
    with pytest.raises(ConfigError, match=r"twice.yaml line \d+: not valid YAML \(key 'tasks' given twice\)"):
        presets.load(str(path))


def test_a_preset_whose_aliases_expand_to_millions_of_values_is_refused(tmp_path) -> None:
    # 9 levels of 10 aliases each: a few hundred bytes that expand to 10^9 values if constructed.
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + yaml.safe_dump(GOOD))
    with pytest.raises(ConfigError, match="expands to more than 100,000 values"):
        presets.load(str(path))


@pytest.mark.parametrize("data,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_preset_is_one_line_naming_file_key_and_value(tmp_path, data, needles) -> None:
    path = write(tmp_path, data)
    with pytest.raises((ConfigError, UnknownChoiceError)) as err:
        presets.load(path)
    message = str(err.value)
    assert "\n" not in message
    assert path in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("name", ["vtab", "fgvc", "demo"])
def test_shipped_presets_load_and_round_trip_through_to_dict(name) -> None:
    p = presets.load(name)
    stored = json.loads(json.dumps(p.to_dict()))  # what the sweep table keeps
    fields = {f.name for f in dataclasses.fields(presets.Preset)}
    assert presets.Preset(**{k: v for k, v in stored.items() if k in fields}) == p


def test_presets_come_from_the_installed_package_data() -> None:
    """``alorectl.sweeps`` is the repository's sweeps/ folder (package-dir); the wheel case is
    tests/test_packaging.py."""
    import importlib.resources

    assert presets.preset_dir() == Path(str(importlib.resources.files("alorectl.sweeps")))
    assert presets.preset_dir().resolve() == presets.REPO_SWEEPS.resolve()
    assert {"demo", "fgvc", "vtab"} <= set(presets.available())


def test_method_space_holds_only_what_the_method_uses() -> None:
    p = presets.load("vtab")
    assert "dropout" in p.space
    for method in ("ssf", "bitfit", "linear", "full"):
        assert "dropout" not in presets.method_space(p, method), method
    assert list(presets.method_space(p, "ssf")) == ["lr", "weight_decay"]
    alore_space = presets.method_space(p, "alore")
    assert alore_space["dropout"] == [0.1, 0.0] and list(alore_space) == ["lr", "weight_decay", "dropout"]
    rep = presets.method_space(p, "repadapter")
    assert list(rep) == ["lr", "weight_decay", "dropout", "scale"]
    assert rep["scale"] == p.method_space["repadapter"]["scale"]
    full_lr = presets.method_space(p, "full")["lr"]
    assert full_lr == p.method_space["full"]["lr"] and full_lr != p.space["lr"]  # replaces the shared lr
    n_lr, n_wd = len(p.space["lr"]), len(p.space["weight_decay"])
    assert presets.grid_size(presets.method_space(p, "ssf")) == n_lr * n_wd
    assert presets.grid_size(rep) == n_lr * n_wd * 2 * len(rep["scale"]) and presets.grid_size({}) == 1


def test_warmup_is_ten_percent_and_follows_epochs_unless_set(tmp_path) -> None:
    train = {"epochs": 100, "batch_size": 32}
    p = presets.load(write(tmp_path, with_(train=train)))
    assert p.warmup_epochs == 10 and presets.effective_warmup(p) == 10 and not p.warmup_explicit
    shorter = dataclasses.replace(p, epochs=30)
    assert shorter.warmup_epochs == 3
    # sweep resume: the stored dict gives back a preset whose warm-up still follows epochs
    again = presets.Preset(**json.loads(json.dumps(p.to_dict())))
    assert again == p and dataclasses.replace(again, epochs=50).warmup_epochs == 5
    set_ = presets.load(write(tmp_path, with_(train={**train, "warmup_epochs": 20}), "set"))
    assert dataclasses.replace(set_, epochs=40).warmup_epochs == 20
    # a config stored before warmup_explicit existed keeps its number
    old = {k: v for k, v in set_.to_dict().items() if k != "warmup_explicit"}
    assert presets.Preset(**old).warmup_epochs == 20


def test_cli_flags_are_validated_and_move_a_derived_warmup(tmp_path) -> None:
    from alorectl.cli.sweep import apply_flags  # imports Ray, starts nothing

    p = presets.load(write(tmp_path, with_(train={"epochs": 100, "batch_size": 32})))
    assert apply_flags(p, epochs=30).warmup_epochs == 3
    for flags, needle in [({"backbones": "vit_tiny_patch16_224./../../../esc"}, "bad backbone name"),
                          ({"tasks": "../t"}, "bad task name"), ({"epochs": 0}, "train.epochs"),
                          ({"cpus_per_trial": 0.0}, "cpus_per_trial")]:
        with pytest.raises(ConfigError, match=needle):
            apply_flags(p, **flags)


@pytest.mark.parametrize("kind,value", [("sweep", "tiny"), ("sweep", "v1.2"), ("backbone", "vit_b"),
                                        ("backbone", "vit_base_patch16_224.orig_in21k"), ("task", "digits_rot"),
                                        ("method", "alore_attn"), ("task", "oxford-pets")])
def test_safe_names_pass(kind, value) -> None:
    assert check_name(kind, value) == value


@pytest.mark.parametrize("kind,value", [("sweep", ".."), ("sweep", "."), ("sweep", "a/b"), ("sweep", "a\\b"),
                                        ("sweep", ""), ("sweep", "-rf"), ("sweep", "a..b"), ("sweep", "x\n"),
                                        ("sweep", "/abs"), ("sweep", "a" * 101), ("sweep", 5),
                                        ("backbone", "vit.a.b"), ("backbone", "vit_tiny_patch16_224./../x"),
                                        ("task", "../t"), ("method", "m/x"), ("task", "ta sk")])
def test_unsafe_names_are_one_line(kind, value) -> None:
    with pytest.raises(ConfigError) as err:
        check_name(kind, value)
    assert f"bad {kind} name {value!r}" in str(err.value) and "\n" not in str(err.value)


def test_inside_refuses_escapes_including_through_a_symlink(tmp_path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    assert inside(work, "ray", "tiny") == (work / "ray" / "tiny").resolve()
    assert inside(work) == work.resolve()
    (work / "link").symlink_to(outside)
    for parts in [("..", "x"), ("a", "..", "..", "x"), (str(outside),), (".",), ("link",), ("link", "f")]:
        with pytest.raises(ConfigError, match="escapes"):
            inside(work, *parts)


@pytest.mark.parametrize("epochs", [1, 5, 15, 25, 100])
def test_train_and_a_sweep_warm_up_the_same_epochs(tmp_path, epochs) -> None:
    """One rule: a sweep's trial gets the warm-up ``alorectl train --epochs E`` would use (5 -> 1, not 0)."""
    from alore.train import TrainConfig
    from alorectl.sweep import plan as planning

    train = {k: v for k, v in GOOD["train"].items() if k != "warmup_epochs"}
    p = presets.load(write(tmp_path, with_(train={**train, "epochs": epochs})))
    plan = planning.build(p, "w", "data", {"demo": None}, cost=lambda b: 1.0)
    spec = planning.TrialSpec(plan.cells[0].cell, planning.SEARCH, 0, 42, {}, plan.cells[0].run)
    assert TrainConfig(**spec.train_kwargs()).warmup_epochs == TrainConfig(epochs=epochs).warmup_epochs
