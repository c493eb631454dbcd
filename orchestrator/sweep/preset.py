"""Sweep presets: YAML files in ``sweeps/`` (data, not code), validated whole into a :class:`Preset`.

A user adds a preset by dropping a YAML file in ``sweeps/`` or passing its path.
The schema is the code: :class:`PresetFile` is the file's shape (sections, keys,
nothing extra) and :class:`Preset` the flat, typed preset the plan reads, both
pydantic models in strict mode, so a wrong type or range is pydantic's own
message, shown as one line that names the file, the key and the value.
What pydantic cannot know is checked after it (:func:`validate`): names (the one
safe pattern of :mod:`alorectl.security`), backbones/tasks/methods known to
alore, every point of every method's grid through the method's own config
class and the run rules of :class:`alore.train.TrainConfig`.

The YAML is read with a loader that refuses a key given twice and a document
whose aliases expand past :data:`MAX_NODES` values (a few nested aliases can
otherwise expand to gigabytes).

Each method searches only what it uses (:func:`method_space`): the shared grid
of table 8 (lr, weight decay, dropout) less dropout for the methods that have
none (SSF, BitFit, linear probing, full fine-tuning), plus its own options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import itertools
import math
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

import alore
from alore.checks import describe, fits
from alore.errors import AloreError, ConfigError, UnknownChoiceError
from alore.methods import get_method
from alore.train import TrainConfig, default_warmup

from alorectl.security import check_name

PACKAGE = "alorectl.sweeps"  # where the presets live once installed as package data
REPO_SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
SEARCH_ALGORITHMS = ("optuna", "grid")
SCHEDULERS = ("fifo", "asha")
SHARED_SPACE = ("lr", "weight_decay", "dropout")
FULL_CHECK_LIMIT = 10_000  # grid points of one method checked one by one; above it, each value once
MAX_NODES = 100_000        # values a preset may expand to, aliases included (the shipped ones: < 200)

STRICT = ConfigDict(extra="forbid", strict=True)
Scalar = int | float | str | bool
Grid = Annotated[list[Scalar], Field(min_length=1)]


@pydantic_dataclass(config=STRICT)
class Preset:
    """A sweep as the plan reads it. ``dataclasses.replace`` and ``Preset(**to_dict())`` validate again."""

    name: str
    suite: Literal["vtab", "fgvc"]
    data_root: Annotated[str, Field(min_length=1)]
    backbones: Annotated[list[str], Field(min_length=1)]
    tasks: Annotated[list[str], Field(min_length=1)]
    methods: Annotated[list[str], Field(min_length=1)]
    algorithm: Literal["optuna", "grid"] = "optuna"
    trials: Annotated[int, Field(ge=1)] = 16
    scheduler: Literal["fifo", "asha"] = "fifo"
    space: dict[str, Grid] = dataclasses.field(default_factory=dict)
    method_space: dict[str, dict[str, Grid]] = dataclasses.field(default_factory=dict)
    epochs: Annotated[int, Field(ge=1)] = 100
    warmup_epochs: Annotated[int, Field(ge=0)] | None = None  # None: alore.train.default_warmup(epochs)
    batch_size: Annotated[int, Field(ge=1)] = 32
    seeds: Annotated[list[int], Field(min_length=1)] = dataclasses.field(default_factory=lambda: [42])
    weights: dict[str, Annotated[str, Field(min_length=1)]] = dataclasses.field(default_factory=dict)
    cpus_per_trial: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    max_concurrent: Annotated[int, Field(ge=1)] | None = None  # None: as many as resources allow
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
    """Warm-up epochs: as set, or the one rule of ``alorectl train`` (:func:`alore.train.default_warmup`)."""
    return preset.warmup_epochs if preset.warmup_explicit else default_warmup(preset.epochs)


# Preset field -> where it is written in a preset file (error messages name the key the user typed).
KEY_OF = {"algorithm": "search.algorithm", "trials": "search.trials", "scheduler": "search.scheduler",
          "epochs": "train.epochs", "warmup_epochs": "train.warmup_epochs", "batch_size": "train.batch_size",
          "seeds": "final.seeds", "cpus_per_trial": "resources.cpus_per_trial",
          "gpus_per_trial": "resources.gpus_per_trial", "max_concurrent": "resources.max_concurrent"}


# ---- the file's shape ---------------------------------------------------------------------------

class _Section(BaseModel):
    """A section of a preset file: only its own keys (an empty section is ``{}``)."""

    model_config = ConfigDict(extra="forbid")


class SearchSection(_Section):
    algorithm: Any = "optuna"
    trials: Any = 16
    scheduler: Any = "fifo"


class TrainSection(_Section):
    epochs: Any = 100
    warmup_epochs: Any = None
    batch_size: Any = 32


class FinalSection(_Section):
    seeds: Any = [42]


class ResourcesSection(_Section):
    cpus_per_trial: Any = 1.0
    gpus_per_trial: Any = 0.0
    max_concurrent: Any = None


class PresetFile(_Section):
    """A preset file: the keys a user may write; types and ranges are :class:`Preset`'s."""

    suite: Any = "vtab"
    data_root: Any = None
    weights: dict[Any, Any] = {}
    backbones: Any = None
    tasks: Any = None
    methods: Any = None
    search: SearchSection = SearchSection()
    space: dict[Any, Any] = {}
    method_space: dict[Any, Any] = {}
    train: TrainSection = TrainSection()
    final: FinalSection = FinalSection()
    resources: ResourcesSection = ResourcesSection()

    @field_validator("search", "train", "final", "resources", "weights", "space", "method_space", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return {} if value is None else value  # `train:` with nothing under it

    def to_preset(self, name: str) -> Preset:
        return Preset(name=name, suite=self.suite, data_root=self.data_root or f"data/{self.suite}",
                      backbones=self.backbones, tasks=self.tasks, methods=self.methods, space=self.space,
                      method_space={m: {} if s is None else s for m, s in self.method_space.items()},
                      weights=self.weights, **self.search.model_dump(), **self.train.model_dump(),
                      **self.final.model_dump(), **self.resources.model_dump())


@contextlib.contextmanager
def one_line(where: str) -> Iterator[None]:
    """pydantic's first error as one :class:`ConfigError` line: where, the key as typed, its message, the value."""
    try:
        yield
    except ValidationError as err:
        raise ConfigError(_first(err, where)) from None


def _first(err: ValidationError, where: str) -> str:
    e = err.errors(include_url=False)[0]
    loc = [str(p) for p in e["loc"]]
    key = ".".join([KEY_OF.get(loc[0], loc[0]), *loc[1:]]) if loc else "preset"
    if e["type"] == "extra_forbidden":  # name the valid keys, as every unknown choice does
        section = _SECTIONS.get(".".join(loc[:-1]))
        if section is not None:
            return (f"unknown key {loc[-1]!r} in {where}{' ' + '.'.join(loc[:-1]) if loc[:-1] else ''}; "
                    f"valid choices: {', '.join(sorted(section.model_fields))}")
    if e["type"] in ("model_type", "dict_type"):  # a section that is not a mapping
        section = _SECTIONS.get(".".join(loc))
        keys = ", ".join(f"{k}: ..." for k in section.model_fields) if section else "key: value, ..."
        return f"{where}: {key} must be a mapping like {{{keys}}}, got {e['input']!r}"
    message = e["msg"][:1].lower() + e["msg"][1:]
    return f"{where}: {key}: {message}, got {e['input']!r}"


_SECTIONS: dict[str, type[_Section]] = {"": PresetFile, "search": SearchSection, "train": TrainSection,
                                        "final": FinalSection, "resources": ResourcesSection}


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

class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values ``node`` stands for once every alias is expanded (aliases share nodes: memoised by identity)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts once, never loops
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def read_yaml(path: Path) -> Any:
    """The document in ``path``; one ConfigError line for bad YAML, a repeated key or an oversized expansion."""
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=_StrictLoader)
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise ConfigError(f"preset {path}: expands to more than {MAX_NODES:,} values (nested aliases?); "
                              "write the values out")
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"preset {path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None


def load(name_or_path: str) -> Preset:
    path = locate(name_or_path)
    raw = read_yaml(path)
    where = f"preset {path}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(PresetFile.model_fields)}")
    with one_line(where):
        preset = PresetFile.model_validate(raw).to_preset(path.stem)
    validate(preset, where)
    return preset


def replace(preset: Preset, where: str = "sweep", **changes: Any) -> Preset:
    """``preset`` with ``changes`` (CLI flags, a stored config), validated again."""
    with one_line(where):
        preset = dataclasses.replace(preset, **changes)
    validate(preset, where)
    return preset


def from_stored(config: dict[str, Any], where: str) -> Preset:
    """The preset a sweep stored in the database (``Preset.to_dict`` plus other keys), validated."""
    fields = {f.name for f in dataclasses.fields(Preset)}
    with one_line(where):
        preset = Preset(**{k: v for k, v in config.items() if k in fields})
    validate(preset, where)
    return preset


# ---- what pydantic cannot know (also after CLI flags changed the preset) ------------------------

def validate(preset: Preset, where: str = "sweep") -> None:
    """Everything a trial would otherwise trip over minutes into training; raises one line."""
    for b in _names(where, "backbones", preset.backbones):
        alore.backbones.resolve(_name(where, "backbone", b))
    for t in _names(where, "tasks", preset.tasks):
        _name(where, "task", t)
    for m in _names(where, "methods", preset.methods):
        if _name(where, "method", m) not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where}", m, alore.METHODS)
    for b in preset.weights:
        _name(where, "backbone", b)
    if len(set(preset.seeds)) != len(preset.seeds):
        raise ConfigError(f"{where}: {KEY_OF['seeds']} has a repeated seed: {preset.seeds!r} "
                          "(two final runs with one seed are the same run twice)")
    if preset.warmup_epochs is not None and preset.warmup_epochs > preset.epochs:
        raise ConfigError(f"{where}: {KEY_OF['warmup_epochs']} must be in [0, {preset.epochs}] (at most "
                          f"{KEY_OF['epochs']}), got {preset.warmup_epochs!r}")
    _train_rules(where, "train", suite=preset.suite, epochs=preset.epochs, warmup_epochs=preset.warmup_epochs,
                 batch_size=preset.batch_size)
    for key, values in preset.space.items():
        if key not in SHARED_SPACE:
            raise UnknownChoiceError(f"space key in {where}", key, SHARED_SPACE)
        _shared_values(where, f"space.{key}", key, values)
    for method, extra in preset.method_space.items():
        if method not in alore.METHODS:
            raise UnknownChoiceError(f"method in {where} method_space", method, alore.METHODS)
        allowed = set(_uses(method)) | set(_options(method))
        for key, values in extra.items():
            if key not in allowed:
                raise UnknownChoiceError(f"option of {method} in {where} method_space", key, allowed,
                                         hint="(a method's space holds only what the method uses)")
            if key in SHARED_SPACE:
                _shared_values(where, f"method_space.{method}.{key}", key, values)
            else:
                _unique(where, f"method_space.{method}.{key}", values)
    for method in dict.fromkeys([*preset.methods, *preset.method_space]):
        _check_method_grid(where, preset, method)


def _name(where: str, kind: str, value: Any) -> str:
    try:
        return check_name(kind, value)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _names(where: str, key: str, values: list) -> list:
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: {key} has a repeated value: {values!r}")
    return values


def _unique(where: str, key: str, values: list) -> list:
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{where}: {key} has a repeated value: {values!r}")
    return values


SHARED_RULES = {"lr": ("> 0", lambda v: v > 0), "weight_decay": (">= 0", lambda v: v >= 0),
                "dropout": ("in [0, 1)", lambda v: 0 <= v < 1)}


def _shared_values(where: str, key: str, name: str, values: list) -> None:
    """A grid of lr / weight_decay / dropout: numbers by table 8's rules, then by TrainConfig's."""
    for v in _unique(where, key, values):
        rule, test = SHARED_RULES[name]
        if not (fits(v, float) and math.isfinite(v) and test(v)):
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
            if key in hints and not fits(v, hints[key]):
                raise ConfigError(f"{where}: method_space.{method}.{key}: bad value {v!r} "
                                  f"({describe(hints[key])} expected)")
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
