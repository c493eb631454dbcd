"""One value checker for everything typed by a person: method options (``--option rank=8``, a preset's
``method_space``) and preset fields alike.

pydantic's strict mode decides whether a value fits a type hint (``int`` refuses ``True`` and ``"8"``, ``float``
takes an int), so the rule is the library's, not a hand-written table; :func:`describe` names what was expected
in the one-line error.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import TypeAdapter, ValidationError


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    return TypeAdapter(hint)


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (strictly: no string-to-number or bool-to-int conversion)."""
    try:
        _adapter(hint).validate_python(value, strict=True)
    except ValidationError:
        return False
    except Exception:  # a hint pydantic cannot build a schema for: the config's own validation decides
        return True
    return True


def describe(hint: Any) -> str:
    """``int | None`` -> "an integer or null": what a person must type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(describe(a) for a in args)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    return getattr(hint, "__name__", str(hint))
