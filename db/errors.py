"""Errors the database layer raises for problems a user can fix.

They derive from :class:`DatabaseError`, a plain ``Exception`` subclass, because
``db/`` must not import ``alore/``; the CLI catches ``DatabaseError`` at the
command boundary next to ``alore.errors.AloreError`` and prints ``str(err)``
as one line on stderr before exiting with code 2.  Messages never contain a
password: URLs in them are always masked with :func:`db.urls.mask_url`.
"""

from __future__ import annotations

from collections.abc import Iterable


class DatabaseError(Exception):
    """A database problem the user can fix; ``str(err)`` is the one line to show."""


class DatabaseURLError(DatabaseError, ValueError):
    """A ``--db`` value that is not a usable database URL."""


class DatabaseUnavailableError(DatabaseError):
    """The database named by ``--db`` cannot be reached or opened."""

    def __init__(self, masked_url: str, cause: str) -> None:
        self.masked_url, self.cause = masked_url, cause
        super().__init__(f"cannot reach database {masked_url}: {cause}")


class SchemaVersionError(DatabaseError):
    """The database's schema is at a revision this version of alore does not know."""


class SweepNotFoundError(DatabaseError, LookupError):
    """A sweep name that is not in the database."""

    def __init__(self, name: str, choices: Iterable[str]) -> None:
        self.name, self.choices = name, sorted(choices)
        valid = ", ".join(self.choices) if self.choices else "(no sweeps recorded yet)"
        super().__init__(f"unknown sweep {name!r}; valid choices: {valid}")


class DatabaseNotFoundError(DatabaseError, LookupError):
    """A database that a reading command expected to exist: no file, or no alore schema in it yet."""

    def __init__(self, masked_url: str, cause: str) -> None:
        self.masked_url, self.cause = masked_url, cause
        super().__init__(f"no alore database at {masked_url}: {cause}")


class UnknownResultError(DatabaseError, LookupError):
    """No result row for a (backbone, task, method); names the combinations that have one."""

    def __init__(self, wanted: str, choices: Iterable[str], reason: str = "") -> None:
        self.wanted, self.choices = wanted, sorted(choices)
        valid = ", ".join(self.choices) if self.choices else "(no results recorded yet: run a sweep)"
        what = reason or f"unknown result {wanted!r} (backbone/task/method)"
        super().__init__(f"{what}; valid choices: {valid}")
