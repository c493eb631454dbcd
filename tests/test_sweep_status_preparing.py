"""``alorectl sweep status NAME`` while a sweep is still starting: the sweep is there from the first slow
step, says what it prepares, and the planned trial count comes from the plan.

The real driver runs up to a step (a hook stops it there, before Ray is started); the status is the real
command reading the real database meanwhile.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alorectl import db
from alorectl.cli import app
from alorectl.defaults import db_url
from alorectl.sweep import preset as presets
from alorectl.sweep.driver import Hooks, Settings, make_plan, run_sweep

runner = CliRunner()


class Stop(Exception):
    """Ends the sweep at the step under test."""


def status_at(step_prefix: str, work: Path) -> dict:
    seen: dict = {}

    def on_step(message: str) -> None:
        if message.startswith(step_prefix):
            shown = runner.invoke(app, ["sweep", "status", "demo", "--workdir", str(work)])
            as_json = runner.invoke(app, ["sweep", "status", "demo", "--workdir", str(work), "--json"])
            seen.update(code=shown.exit_code, text=shown.output, stderr=shown.stderr, json=as_json.stdout)
            raise Stop

    with pytest.raises(Stop):
        run_sweep(presets.load("demo"), Settings.embedded("demo", work), Hooks(on_step=on_step))
    return seen


def test_status_while_the_demo_data_is_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    seen = status_at("writing the demo data", work)
    assert seen["code"] == 0, seen["stderr"]
    assert "demo (pending)" in seen["text"] and "preparing data and weights" in seen["text"]
    assert "ETA" not in seen["text"]  # nothing to estimate from yet
    engine = db.connect(db_url(work))
    try:
        assert db.sweep_status(engine, "demo").status == "interrupted"  # stopped while preparing: said so
    finally:
        engine.dispose()


def test_status_shows_the_planned_trials_before_ray_starts(tmp_path: Path, demo_dir: Path) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    shutil.copytree(demo_dir / "vtab-1k", work / "data" / "vtab-1k")
    shutil.copy(demo_dir / "demo.safetensors", work / "data" / "demo.safetensors")
    work.chmod(0o700)
    plan = make_plan(presets.load("demo"), Settings.embedded("demo", work))
    seen = status_at("starting Ray", work)
    assert seen["code"] == 0, seen["stderr"]
    assert f"starting Ray; {plan.total_trials} trials planned" in seen["text"]
    status = json.loads(seen["json"])
    assert status["planned"] == {cp.cell.key: cp.n_trials for cp in plan.cells}
    assert set(status["planned"].values()) == {3}  # the demo: 2 search trials + 1 final seed per cell
