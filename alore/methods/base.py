"""What every method shares: the registry, config validation, freezing, wrappers.

A method is registered once with :func:`register`; the generic code
(``alore.apply``, ``alore.merge``, the CLI, the sweep) only ever looks it up in
:data:`METHODS` and never names a method.

Methods insert their parameters by replacing a timm submodule with a
:class:`Wrapper` that keeps the original as ``base_layer`` (as PEFT does) and
knows how to fold itself back into a module of the original type
(:meth:`Wrapper.merged`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, NotMergeableError, UnknownChoiceError


@dataclasses.dataclass
class MethodConfig:
    """Base class for method configs: dataclass fields with ``help`` metadata."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad value; subclasses extend."""

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> MethodConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise UnknownChoiceError(f"option for {cls.__name__}", unknown[0], names)
        return cls(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by the CLI)."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[MethodConfig]
    apply: Callable[[nn.Module, Any], None]
    mergeable: bool
    description: str
    paper_params: str = ""  # the table 10 formula the count follows


METHODS: dict[str, Method] = {}


def register(name: str, config_cls: type[MethodConfig], *, mergeable: bool, description: str,
             paper_params: str = "") -> Callable:
    """Decorator for a method's ``apply(model, config)``."""

    def wrap(fn: Callable[[nn.Module, Any], None]) -> Callable[[nn.Module, Any], None]:
        METHODS[name] = Method(name, config_cls, fn, mergeable, description, paper_params)
        return fn

    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownChoiceError("method", name, METHODS)
    return METHODS[name]


class Wrapper(nn.Module):
    """A timm submodule plus the method's parameters around it."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer

    def merged(self) -> nn.Module:
        """A module of ``type(base_layer)`` computing what this wrapper computes in eval mode."""
        raise NotMergeableError(f"{type(self).__name__} adds computation that cannot be folded into the backbone")


def replace(model: nn.Module, path: str, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    new = wrap(model.get_submodule(path))
    model.set_submodule(path, new)
    return new


def unwrap_all(model: nn.Module) -> None:
    """Replace every :class:`Wrapper` in ``model`` by its folded base module, in place."""
    paths = [name for name, m in model.named_modules() if isinstance(m, Wrapper)]
    # Deepest first, so a wrapper never folds a child that is still wrapped.
    for path in sorted(paths, key=lambda p: p.count("."), reverse=True):
        model.set_submodule(path, model.get_submodule(path).merged())


# ---- shared pieces of the linear, re-parameterizable methods ------------------------------------

def fold_affine_into_linear(linear: nn.Linear, matrix: torch.Tensor, shift: torch.Tensor | None,
                            position: str) -> nn.Linear:
    """Fold ``x -> x @ matrix + shift`` before (``pre``) or after (``post``) a Linear (paper eq. 8).

    In row-vector form a Linear is ``x W^T + b``. Pre: ``(x M + c) W^T + b = x (W M^T)^T + (c W^T + b)``.
    Post: ``(x W^T + b) M + c = x (M^T W)^T + (b M + c)``.
    """
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype,
                                                                             device=weight.device)
    if position == "pre":
        new_w, new_b = weight @ matrix.T, bias + (shift @ weight.T if shift is not None else 0)
    else:
        new_w, new_b = matrix.T @ weight, bias @ matrix + (shift if shift is not None else 0)
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None or shift is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(new_w)
        if out.bias is not None:
            out.bias.copy_(new_b)
    return out


class AffineAround(Wrapper):
    """Apply a linear ``transform`` (with ``as_affine() -> (M, c)``) before or after a Linear.

    Used by ALoRE and RepAdapter, whose modules are purely linear so that they fold
    into the nearest pre-trained projection (sequential re-parameterization, eq. 8).
    """

    def __init__(self, base_layer: nn.Linear, transform: nn.Module, position: str) -> None:
        super().__init__(base_layer)
        if not isinstance(base_layer, nn.Linear):
            raise ConfigError(f"{type(transform).__name__} needs an nn.Linear to fold into, "
                              f"found {type(base_layer).__name__}")
        self.transform = transform
        self.position = position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == "pre":
            return self.base_layer(self.transform(x))
        return self.transform(self.base_layer(x))

    def merged(self) -> nn.Linear:
        matrix, shift = self.transform.as_affine()
        return fold_affine_into_linear(self.base_layer, matrix, shift, self.position)

    def extra_repr(self) -> str:
        return f"position={self.position}"
