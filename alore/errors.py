"""Errors a user can cause.

Every error raised for bad input derives from :class:`AloreError`; the CLI
catches exactly this class at the command boundary and prints its message as
one line on stderr (exit code 2). Anything else is a bug and keeps its trace.
"""

from __future__ import annotations

from collections.abc import Iterable


class AloreError(Exception):
    """A problem the user can fix; ``str(err)`` is the one line to show."""


class UnknownChoiceError(AloreError, ValueError):
    """A name that is not among the valid choices."""

    def __init__(self, kind: str, value: object, choices: Iterable[str], hint: str = "") -> None:
        self.kind, self.value, self.choices = kind, value, sorted(choices)
        msg = f"unknown {kind} {value!r}; valid choices: {', '.join(self.choices)}"
        super().__init__(msg + (f" {hint}" if hint else ""))


class ConfigError(AloreError, ValueError):
    """A configuration value out of its valid range."""


class WeightsError(AloreError):
    """A weights file that is missing, unreadable or does not fit the architecture."""


class DataError(AloreError):
    """A dataset that is missing or malformed on disk."""


class NotMergeableError(AloreError):
    """The method adds computation that cannot be folded into the backbone."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name: what a one-line error quotes."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
