"""The CLI's shared pieces: a Typer app whose commands turn user errors into one line and exit 2."""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperGroup

from alore.errors import AloreError
from alorectl.db.errors import DatabaseError
from alorectl.db.urls import mask_text

from . import faults

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

#: Exit code for errors the user can fix (bad value, missing data, unreachable service).
USER_ERROR = 2


def user_errors(fn: Callable) -> Callable:
    """Catch the errors a user can cause at the command boundary: one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)  # a command's return value is never its exit code (as with plain Click)
        except (AloreError, DatabaseError) as err:
            fail(str(err))
        except (KeyboardInterrupt, faults.Interrupted) as err:
            print_error(str(err) or "interrupted")
            raise typer.Exit(faults.INTERRUPTED) from None
        except Exception as err:  # a full disk, a read-only or corrupt database: one line; a bug keeps its trace
            line = faults.describe(err)
            if line is None:
                raise
            fail(line)

    return wrapper


def fail(message: str) -> None:
    print_error(message)
    raise typer.Exit(USER_ERROR)


resume_hint = faults.resume_hint


def print_error(message: str) -> None:
    """``error: message`` on stderr. The message quotes what the user typed: never read as Rich markup
    (``--port '[/x]'`` would crash the printer), never with a password in it."""
    err_console.print(f"[bold red]error:[/] {escape(mask_text(message))}", highlight=False, markup=True)


class OneLineGroup(TyperGroup):
    """Click's own usage errors (an unknown option, a value of the wrong type, a missing argument) as one
    line too, like every other mistake: Typer would print a usage box of five lines. Help, ``--help``, exit
    codes and an aborted prompt stay as Click makes them."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        plain_help(self)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as err:  # Click's exceptions (Typer vendors Click) derive from it
            if type(err).__name__ == "NoArgsIsHelpError":  # the help was printed while raising it (as Typer does)
                sys.exit(err.exit_code)
            context = getattr(err, "ctx", None)
            hint = f"; see '{context.command_path} --help'" if context is not None else ""
            message = " ".join(err.format_message().split()).rstrip(".")
            # Typer checks types with pydantic, whose error holds the value the user typed.
            errors = getattr(err.__cause__, "errors", None)
            if callable(errors) and errors() and "input" in errors()[0]:
                message += f" (got {errors()[0]['input']!r})"
            print_error(message + hint)
            sys.exit(err.exit_code)
        except typer.Abort:
            err_console.print("Aborted!")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)  # an int only from typer.Exit: commands return None


def _usage_name(param: TyperArgument) -> str:
    return param.metavar + ("..." if param.nargs != 1 else "")


def plain_help(command: Any) -> None:
    """Help as Click writes it: a flag is just ``--force`` (Typer 0.29 adds ``<bool>``) and an argument is
    ``NAME`` in the usage line and the table (Typer writes ``{name}``). Walks every subcommand; safe to repeat.
    Touches Typer's private ``_usage_display_name`` (per parameter): there is no public setting for it."""
    for param in getattr(command, "params", ()):
        if isinstance(param, TyperArgument):
            param.metavar = param.metavar or (param.name or "").upper()
            param._usage_display_name = functools.partial(_usage_name, param)  # type: ignore[method-assign]
        elif getattr(param, "is_bool_flag", False) or getattr(param, "is_flag", False):
            param.metavar = ""  # shown as nothing: a flag takes no value
    if not getattr(command, "_plain_help", False) and hasattr(command, "get_help_option"):
        command.get_help_option = functools.partial(_help_option, command.get_help_option)
        command._plain_help = True
    for sub in getattr(command, "commands", {}).values():
        plain_help(sub)


def _help_option(make: Callable, ctx: Any) -> Any:
    option = make(ctx)
    if option is not None:
        option.metavar = ""
    return option


class App(typer.Typer):
    """``typer.Typer`` whose commands all go through :func:`user_errors`."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", OneLineGroup)
        kwargs.setdefault("pretty_exceptions_show_locals", False)  # locals may hold credentials
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("add_completion", False)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        register = super().command(*args, **kwargs)
        return lambda fn: register(user_errors(fn))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


class Lazy:
    """A module imported on first attribute access. The root app imports every command module to list its
    commands, and torch, Ray and MLflow take seconds to import: quick commands (``sweep status``,
    ``leaderboard``, ``--help``) must not wait for them."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []
