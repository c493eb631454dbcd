"""Sweep presets: YAML files in ``sweeps/`` (data, not code), validated whole into a :class:`Preset`.

A user adds a preset by dropping a YAML file in ``sweeps/`` or passing its path.
Everything a trial would trip over later is checked here, before Ray starts:
names (the one safe pattern of :mod:`alorectl.security`), every section's
shape and types, the train section by :class:`alore.train.TrainConfig`'s rules,
and every point of every method's grid through the method's own config class.
Each mistake is one line naming the file, the key, the bad value and what is
valid.

Each method searches only what it uses (:func:`method_space`): the shared grid
of table 8 (lr, weight decay, dropout) less dropout for the methods that have
none (SSF, BitFit, linear probing, full fine-tuning), plus its own options.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

import alore
from alore.data import SUITES
from alore.errors import AloreError, ConfigError, UnknownChoiceError
from alore.methods import get_method
from alore.train import TrainConfig

from alorectl.security import check_name

PACKAGE = "alorectl.sweeps"  # where the presets live once installed as package data
REPO_SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SEARCH_ALGORITHMS = ("optuna", "grid")
SCHEDULERS = ("fifo", "asha")
SHARED_SPACE = ("lr", "weight_decay", "dropout")
TOP_KEYS = ("suite", "data_root", "weights", "backbones", "tasks", "methods", "search", "space", "method_space",
            "train", "final", "resources")
SECTIONS = {"search": ("algorithm", "trials", "scheduler"), "train": ("epochs", "warmup_epochs", "batch_size"),
            "final": ("seeds",), "resources": ("cpus_per_trial", "gpus_per_trial", "max_concurrent")}
# Preset field -> where it is written in a preset file (error messages name the key the user typed).
KEY_OF = {field: f"{section}.{field}" for section, fields in SECTIONS.items() for field in fields}
FULL_CHECK_LIMIT = 10_000  # grid points of one method checked one by one; above it, each value once


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
    warmup_epochs: int | None = None  # None: 10% of epochs (see effective_warmup)
    batch_size: int = 32
    seeds: list[int] = dataclasses.field(default_factory=lambda: [42])
    weights: dict[str, str] = dataclasses.field(default_factory=dict)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # trials of one cell at once; None: as many as resources allow
    # Whether warmup_epochs was set by the user; if not, it follows epochs. None: explicit iff warmup_epochs
    # is given, which keeps configs stored before this field existed (they always carried a number) as they were.
    warmup_explicit: bool | None = None

    def __post_init__(self) -> None:
        if self.warmup_explicit is None:
            self.warmup_explicit = self.warmup_epochs is not None
        # dataclasses.replace(p, epochs=...) comes through here too, so a derived warm-up follows new epochs.
        self.warmup_epochs = effective_warmup(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; ``Preset(**to_dict())`` gives the same preset back (sweep resume)."""
        return dataclasses.asdict(self)


def effective_warmup(preset: Preset) -> int | None:
    """Warm-up epochs: as set, or 10% of epochs (the paper: 10 of 100, section 4.1), rounded down."""
    if preset.warmup_explicit:
        return preset.warmup_epochs
    if isinstance(preset.epochs, int) and not isinstance(preset.epochs, bool):
        return preset.epochs // 10
    return preset.warmup_epochs  # epochs is not a number: validate() reports it


# ---- where presets live -------------------------------------------------------------------------

def preset_dir() -> Path:
    """The installed package data (``alorectl.sweeps``) if present, else the repository's ``sweeps/``."""
    try:
        found = importlib.resources.files(PACKAGE)
    except (ModuleNotFoundError, TypeError, ValueError):
        found = None
    # Only a real folder will do: presets are read and globbed as files (a zipped install is not supported).
    if isinstance(found, Path) and found.is_dir() and any(found.glob("*.yaml")):
        return found
    return REPO_SWEEPS


PRESET_DIR = preset_dir()


def available() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def locate(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        return path
    if "/" in name_or_path or name_or_path not in available():
        raise UnknownChoiceError("preset", name_or_path, available(), hint="(or a path to a .yaml file)")
    return preset_dir() / f"{name_or_path}.yaml"


# ---- reading a file -----------------------------------------------------------------------------

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
    where = f"preset {path}"
    unknown = sorted(set(raw) - set(TOP_KEYS), key=str)
    if unknown:
        raise UnknownChoiceError(f"key in {where}", unknown[0], TOP_KEYS)
    sections = {key: _mapping(where, key, raw.get(key), keys) for key, keys in SECTIONS.items()}
    search, train, final, res = (sections[k] for k in ("search", "train", "final", "resources"))
    method_space = _mapping(where, "method_space", raw.get("method_space"))
    for method, extra in method_space.items():
        method_space[method] = _mapping(where, f"method_space.{method}", extra)
    suite = raw.get("suite", "vtab")
    preset = Preset(
        name=path.stem, suite=suite, data_root=raw.get("data_root", f"data/{suite}"),
        backbones=raw.get("backbones"), tasks=raw.get("tasks"), methods=raw.get("methods"),
        algorithm=search.get("algorithm", "optuna"), trials=search.get("trials", 16),
        scheduler=search.get("scheduler", "fifo"), space=_mapping(where, "space", raw.get("space")),
        method_space=method_space, epochs=train.get("epochs", 100), warmup_epochs=train.get("warmup_epochs"),
        batch_size=train.get("batch_size", 32), seeds=final.get("seeds", [42]),
        weights=_mapping(where, "weights", raw.get("weights")), cpus_per_trial=res.get("cpus_per_trial", 1.0),
        gpus_per_trial=res.get("gpus_per_trial", 0.0), max_concurrent=res.get("max_concurrent"),
    )
    validate(preset, where)
    return preset


def _mapping(where: str, key: str, value: Any, keys: tuple[str, ...] | None = None) -> dict:
    """A section that must be a mapping (absent or empty: ``{}``), with only ``keys`` if given."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        shape = f"{{{', '.join(f'{k}: ...' for k in keys)}}}" if keys else "{key: value, ...}"
        raise ConfigError(f"{where}: {key} must be a mapping like {shape}, got {value!r}")
    if keys is not None:
        unknown = sorted(set(value) - set(keys), key=str)
        if unknown:
            raise UnknownChoiceError(f"key in {where} {key}", unknown[0], keys)
    return dict(value)


# ---- validation (also after CLI flags changed the preset) ---------------------------------------

def validate(preset: Preset, where: str = "sweep") -> None:
    """Everything a trial would otherwise trip over minutes into training; raises one line."""
    if not isinstance(preset.suite, str) or preset.suite not in SUITES:
        raise UnknownChoiceError(f"suite in {where}", preset.suite, SUITES)
    if not isinstance(preset.data_root, str) or not preset.data_root:
        raise ConfigError(f"{where}: data_root must be a folder path, got {preset.data_root!r}")
    for b in _names(where, "backbones", preset.backbones):
        alore.backbones.resolve(_name(where, "backbone", b))
    for t in _names(where, "tasks", preset.tasks):
        _name(where, "task", t)
    for m in _names(where, "methods", preset.methods):
        if _name(where, "method", m) not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where}", m, alore.METHODS)
    for b, w in preset.weights.items():
        _name(where, "backbone", b)
        if not isinstance(w, str) or not w:
            raise ConfigError(f"{where}: weights.{b} must be a file path (or 'timm'), got {w!r}")
    if preset.algorithm not in SEARCH_ALGORITHMS:
        raise UnknownChoiceError(f"search algorithm in {where}", preset.algorithm, SEARCH_ALGORITHMS)
    if preset.scheduler not in SCHEDULERS:
        raise UnknownChoiceError(f"scheduler in {where}", preset.scheduler, SCHEDULERS)
    _integer(where, "trials", preset.trials, 1)
    _integer(where, "epochs", preset.epochs, 1)
    _integer(where, "warmup_epochs", preset.warmup_epochs, 0, preset.epochs)
    _integer(where, "batch_size", preset.batch_size, 1)
    if preset.max_concurrent is not None:
        _integer(where, "max_concurrent", preset.max_concurrent, 1)
    _number(where, "cpus_per_trial", preset.cpus_per_trial, "> 0", lambda v: v > 0)
    _number(where, "gpus_per_trial", preset.gpus_per_trial, ">= 0", lambda v: v >= 0)
    seeds = preset.seeds
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise ConfigError(f"{where}: {KEY_OF['seeds']} must be a non-empty list of integers, got {seeds!r}")
    _train_rules(where, "train", suite=preset.suite, epochs=preset.epochs, warmup_epochs=preset.warmup_epochs,
                 batch_size=preset.batch_size)
    for key, values in preset.space.items():
        if key not in SHARED_SPACE:
            raise UnknownChoiceError(f"space key in {where}", key, SHARED_SPACE)
        _shared_values(where, f"space.{key}", key, values)
    for method, extra in preset.method_space.items():
        if method not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where} method_space", method, alore.METHODS)
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}: method_space.{method} must be a mapping of option: [values], got {extra!r}")
        allowed = set(_uses(method)) | set(_options(method))
        for key, values in extra.items():
            if key not in allowed:
                raise UnknownChoiceError(f"option of {method} in {where} method_space", key, allowed,
                                         hint="(a method's space holds only what the method uses)")
            if key in SHARED_SPACE:
                _shared_values(where, f"method_space.{method}.{key}", key, values)
            else:
                _grid(where, f"method_space.{method}.{key}", values)
    for method in dict.fromkeys([*preset.methods, *preset.method_space]):
        _check_method_grid(where, preset, method)


def _name(where: str, kind: str, value: Any) -> str:
    try:
        return check_name(kind, value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(where: str, field: str, value: Any, low: int, high: Any = None) -> None:
    within = f"in [{low}, {high}]" if high is not None else f">= {low}"
    ok = _is_int(value) and value >= low and (high is None or not _is_int(high) or value <= high)
    if not ok:
        raise ConfigError(f"{where}: {KEY_OF.get(field, field)} must be an integer {within}, got {value!r}")


def _number(where: str, field: str, value: Any, rule: str, test: Any) -> None:
    if not (_is_number(value) and test(value)):
        raise ConfigError(f"{where}: {KEY_OF.get(field, field)} must be a number {rule}, got {value!r}")


def _names(where: str, key: str, values: Any) -> list:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {key} must be a non-empty list of names, got {values!r}")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: {key} has a repeated value: {values!r}")
    return values


def _grid(where: str, key: str, values: Any) -> list:
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float, str, bool)) for v in values):
        raise ConfigError(f"{where}: {key} must be a non-empty list of values, got {values!r}")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: {key} has a repeated value: {values!r}")
    return values


SHARED_RULES = {"lr": ("> 0", lambda v: v > 0), "weight_decay": (">= 0", lambda v: v >= 0),
                "dropout": ("in [0, 1)", lambda v: 0 <= v < 1)}


def _shared_values(where: str, key: str, name: str, values: Any) -> None:
    """A grid of lr / weight_decay / dropout: numbers by table 8's rules, then by TrainConfig's."""
    for v in _grid(where, key, values):
        rule, test = SHARED_RULES[name]
        if not (_is_number(v) and test(v)):
            raise ConfigError(f"{where}: {key}: bad grid value {v!r} for {name} (must be a number {rule})")
        _train_rules(where, f"{key} value {v!r}", **{name: v})


def _train_rules(where: str, what: str, **values: Any) -> None:
    """The checks one run makes (TrainConfig.validate), made now instead of inside a trial."""
    try:
        TrainConfig(**values).validate()
    except (TypeError, ValueError, AloreError) as err:
        raise ConfigError(f"{where}: {what}: {err}") from None


# ---- per-method search spaces -------------------------------------------------------------------

def _fields(method: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_method(method).config_cls)]


def _uses(method: str) -> tuple[str, ...]:
    """The shared hyper-parameters ``method`` uses.

    Every method trains with lr and weight decay. Dropout reaches a method only
    through its config's ``dropout`` field (alore.train.build_model passes the
    run's dropout only then), so a method without one must not search it: two
    trials differing only in dropout would be the same run twice.
    """
    return tuple(k for k in SHARED_SPACE if k != "dropout" or "dropout" in _fields(method))


def _options(method: str) -> list[str]:
    """Config options of ``method`` a preset may search (the shared ones excluded)."""
    return [f for f in _fields(method) if f not in SHARED_SPACE]


def method_space(preset: Preset, method: str) -> dict[str, list]:
    """The grid ``method`` is searched over: shared keys it uses, then its options, in a stable order.

    A key in ``method_space.<method>`` replaces the shared one (e.g. full
    fine-tuning's smaller learning rates).
    """
    own = preset.method_space.get(method) or {}
    space = {key: list(own.get(key, preset.space.get(key, [])))
             for key in _uses(method) if key in own or key in preset.space}
    space.update({key: list(own[key]) for key in _options(method) if key in own})
    return space


def grid_size(space: dict[str, list]) -> int:
    """Number of points of a grid (1 for an empty one: the defaults)."""
    return math.prod(len(v) for v in space.values())


def _check_method_grid(where: str, preset: Preset, method: str) -> None:
    """Build ``method``'s config at the points of its grid, so a bad option fails now, not in a trial."""
    config_cls = get_method(method).config_cls
    space = {k: v for k, v in method_space(preset, method).items() if k in _fields(method)}
    hints = typing.get_type_hints(config_cls)
    for key, values in space.items():
        for v in values:
            expected = _type_mismatch(v, hints.get(key))
            if expected:
                raise ConfigError(f"{where}: method_space.{method}.{key}: bad value {v!r} ({expected} expected)")
    for point in _points(space):
        try:
            config_cls(**point)
        except (TypeError, ValueError, AloreError) as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise ConfigError(f"{where}: {method} with {shown}: {err}") from None


def _points(space: dict[str, list]) -> typing.Iterator[dict[str, Any]]:
    """Every grid point; for a huge grid, enough real points that every value appears in one."""
    keys = list(space)
    if grid_size(space) <= FULL_CHECK_LIMIT:
        for combo in itertools.product(*space.values()):
            yield dict(zip(keys, combo))
        return
    first = {k: v[0] for k, v in space.items()}
    for key, values in space.items():
        for v in values:
            yield {**first, key: v}


def _type_mismatch(value: Any, hint: Any) -> str | None:
    """What ``hint`` expects if ``value`` does not fit it (simple types only), else None."""
    if hint is None:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        wrong = [_type_mismatch(value, a) for a in args]
        return None if any(w is None for w in wrong) else " or ".join(w for w in wrong if w)
    hint = typing.get_origin(hint) or hint
    if hint is bool:
        return None if isinstance(value, bool) else "true/false"
    if hint is int:
        return None if _is_int(value) else "an integer"
    if hint is float:
        return None if _is_number(value) else "a number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if hint is list:
        return None if isinstance(value, list) else "a list"
    return None
