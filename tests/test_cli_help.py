"""``--help`` of every command: an example to copy, flags without a type, arguments as NAME."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from alorectl.cli import app

runner = CliRunner()


def commands(group: typer.core.TyperCommand | typer.core.TyperGroup, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, sub in getattr(group, "commands", {}).items():
        found += commands(sub, (*path, name)) if hasattr(sub, "commands") else [(*path, name)]
    return found


ALL = commands(typer.main.get_command(app))


def help_of(*path: str) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_covered() -> None:
    assert {("sweep", "run"), ("leaderboard",), ("export",), ("ui",), ("analyze", "tsne")} <= set(ALL)


@pytest.mark.parametrize("path", ALL, ids=[" ".join(p) for p in ALL])
def test_help_has_an_example_and_plain_flags(path: tuple[str, ...]) -> None:
    text = help_of(*path)
    assert "Examples:" in text and f"alorectl {' '.join(path[:1])}" in text.split("Examples:", 1)[1]
    assert "<bool>" not in text  # a flag takes no value
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage  # an argument is NAME, not {name}
    for word in re.findall(r"\b[A-Z]{3,}\b", usage.split("[OPTIONS]", 1)[-1]):
        assert word.isupper()


def test_the_sweep_preset_shortcut_is_mentioned() -> None:
    assert "alorectl sweep PRESET" in help_of("sweep")


HEAVY = ("torch", "timm", "ray", "mlflow", "optuna", "pandas")


@pytest.mark.parametrize("args", [["--help"], ["sweep", "--help"], ["sweep", "status", "demo"], ["leaderboard"]],
                         ids=["help", "sweep-help", "status", "leaderboard"])
def test_quick_commands_load_no_training_or_tracking_stack(tmp_path, args) -> None:
    """``--help``, ``sweep status`` and ``leaderboard`` (a person runs them often, and a sweep's operator
    polls them) import neither torch, timm, Ray, MLflow, Optuna nor pandas: seconds of import each."""
    import json
    import subprocess
    import sys

    code = ("import json, sys\nfrom alorectl.cli import main\nsys.argv = ['alorectl', *json.loads(sys.argv[1])]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([*args, *(["--workdir", str(tmp_path)]
                                                                           if "--help" not in args else [])])],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], out.stdout + out.stderr
