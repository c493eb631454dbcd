"""The CLI's shared pieces: a Typer app whose commands turn user errors into one line and exit 2."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from alore.errors import AloreError
from alorectl.db.errors import DatabaseError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Exit code for errors the user can fix (bad value, missing data, unreachable service).
USER_ERROR = 2


def user_errors(fn: Callable) -> Callable:
    """Catch the errors a user can cause at the command boundary: one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (AloreError, DatabaseError) as err:
            fail(str(err))

    return wrapper


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(USER_ERROR)


class App(typer.Typer):
    """``typer.Typer`` whose commands all go through :func:`user_errors`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pretty_exceptions_show_locals", False)  # locals may hold credentials
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        register = super().command(*args, **kwargs)
        return lambda fn: register(user_errors(fn))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []
