"""Sweep presets: YAML files in ``sweeps/`` (data, not code), validated into a :class:`Preset`.

A user adds a preset by dropping a YAML file in ``sweeps/`` or passing its path;
every mistake is reported as one line naming the file, the key and the valid
choices.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

import alore
from alore.data import SUITES
from alore.errors import ConfigError, UnknownChoiceError

PRESET_DIR = Path(__file__).resolve().parents[1] / "sweeps"
SEARCH_ALGORITHMS = ("optuna", "grid")
SCHEDULERS = ("fifo", "asha")
SHARED_SPACE = ("lr", "weight_decay", "dropout")
TOP_KEYS = ("suite", "data_root", "weights", "backbones", "tasks", "methods", "search", "space", "method_space",
            "train", "final", "resources")


@dataclasses.dataclass
class Preset:
    name: str
    suite: str
    data_root: str
    backbones: list[str]
    tasks: list[str]
    methods: list[str]
    algorithm: str = "optuna"
    trials: int = 16
    scheduler: str = "fifo"
    space: dict[str, list] = dataclasses.field(default_factory=dict)
    method_space: dict[str, dict[str, list]] = dataclasses.field(default_factory=dict)
    epochs: int = 100
    warmup_epochs: int = 10
    batch_size: int = 32
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42])
    weights: dict[str, str] = dataclasses.field(default_factory=dict)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # trials of one cell at once; None: as many as resources allow

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def locate(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        return path
    if "/" in name_or_path or name_or_path not in available():
        raise UnknownChoiceError("preset", name_or_path, available(), hint="(or a path to a .yaml file)")
    return PRESET_DIR / f"{name_or_path}.yaml"


def _list(where: str, value: Any, kind: type | tuple = str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, kind) for v in value):
        raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
    return value


def _grid(where: str, values: Any) -> list:
    values = _list(where, values, (int, float, str, bool))
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where} has a repeated value: {values!r}")
    return values


def _check_numbers(where: str, key: str, values: list) -> None:
    if key in ("lr", "weight_decay", "dropout", "scale"):
        for v in values:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if key == "lr":
                ok = ok and v > 0
            elif key == "dropout":
                ok = ok and 0 <= v < 1
            elif key == "weight_decay":
                ok = ok and v >= 0
            if not ok:
                rule = {"lr": "> 0", "dropout": "in [0, 1)", "weight_decay": ">= 0", "scale": "a number"}[key]
                raise ConfigError(f"{where}: bad grid value {v!r} for {key} (must be {rule})")


def load(name_or_path: str) -> Preset:
    path = locate(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"preset {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path}: expected a mapping of {', '.join(TOP_KEYS)}")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise UnknownChoiceError(f"key in preset {path}", unknown[0], TOP_KEYS)
    where = f"preset {path}"
    suite = raw.get("suite", "vtab")
    if suite not in SUITES:
        raise UnknownChoiceError(f"suite in {where}", suite, SUITES)
    methods = _list(f"{where}: methods", raw.get("methods"))
    for m in methods:
        if m not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where}", m, alore.METHODS)
    backbones = _list(f"{where}: backbones", raw.get("backbones"))
    for b in backbones:
        alore.backbones.resolve(b)
    search = raw.get("search") or {}
    algorithm, scheduler = search.get("algorithm", "optuna"), search.get("scheduler", "fifo")
    if algorithm not in SEARCH_ALGORITHMS:
        raise UnknownChoiceError(f"search algorithm in {where}", algorithm, SEARCH_ALGORITHMS)
    if scheduler not in SCHEDULERS:
        raise UnknownChoiceError(f"scheduler in {where}", scheduler, SCHEDULERS)
    space = raw.get("space") or {}
    for key, values in space.items():
        if key not in SHARED_SPACE:
            raise UnknownChoiceError(f"space key in {where}", key, SHARED_SPACE)
        _check_numbers(where, key, _grid(f"{where}: space.{key}", values))
    method_space = raw.get("method_space") or {}
    for method, extra in method_space.items():
        if method not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where} method_space", method, alore.METHODS)
        fields = {f.name for f in dataclasses.fields(alore.METHODS[method].config_cls)} | set(SHARED_SPACE)
        for key, values in (extra or {}).items():
            if key not in fields:
                raise UnknownChoiceError(f"option of {method} in {where} method_space", key, fields)
            _check_numbers(where, key, _grid(f"{where}: method_space.{method}.{key}", values))
    train, final, res = raw.get("train") or {}, raw.get("final") or {}, raw.get("resources") or {}
    preset = Preset(
        name=path.stem, suite=suite, data_root=str(raw.get("data_root", f"data/{suite}")), backbones=backbones,
        tasks=_list(f"{where}: tasks", raw.get("tasks")), methods=methods, algorithm=algorithm,
        trials=int(search.get("trials", 16)), scheduler=scheduler, space=space, method_space=method_space,
        epochs=int(train.get("epochs", 100)), warmup_epochs=int(train.get("warmup_epochs", 10)),
        batch_size=int(train.get("batch_size", 32)), seeds=_list(f"{where}: final.seeds", final.get("seeds", [42]), int),
        weights=dict(raw.get("weights") or {}), cpus_per_trial=float(res.get("cpus_per_trial", 1)),
        gpus_per_trial=float(res.get("gpus_per_trial", 0)),
    )
    validate(preset, where)
    return preset


def validate(preset: Preset, where: str = "sweep") -> None:
    """Checks that also apply after CLI flags changed the preset."""
    if preset.trials < 1:
        raise ConfigError(f"{where}: trials must be >= 1, got {preset.trials}")
    if preset.epochs < 1 or not 0 <= preset.warmup_epochs <= preset.epochs:
        raise ConfigError(f"{where}: need epochs >= 1 and 0 <= warmup_epochs <= epochs, "
                          f"got {preset.epochs} and {preset.warmup_epochs}")
    if preset.cpus_per_trial <= 0 or preset.gpus_per_trial < 0:
        raise ConfigError(f"{where}: cpus_per_trial must be > 0 and gpus_per_trial >= 0")
    for m in preset.methods:
        if m not in alore.METHODS:
            raise UnknownChoiceError("method", m, alore.METHODS)
    for b in preset.backbones:
        alore.backbones.resolve(b)
