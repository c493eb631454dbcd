"""``alorectl leaderboard`` as a person reads it: an 80-column terminal (or a pipe), CSV/JSON with the
database's own numbers, and a default backbone."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import fmean

import pytest
from typer.testing import CliRunner

from alore.data import VTAB_TASKS
from alorectl import db
from alorectl.cli import app
from alorectl.defaults import db_url

runner = CliRunner()
#: Long method names (the ones an 80-column table used to cut) and their trainable parameters.
METHODS = {"adaptformer": 1234, "vpt_shallow": 880, "repadapter": 150_000, "alore_attn": 96_512, "alore": 201_111}


def accuracy(method: str, task: str) -> float:
    """Values with more digits than any table shows, e.g. 61.75 and 37.333..."""
    return 40.0 + (hash((method, task)) % 5000) / 300.0 + 0.005


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("board") / "work"
    engine = db.connect(db_url(work))
    sweep = db.upsert_sweep(engine, "vtab", preset="vtab", suite="vtab", status="done")
    for method, params in METHODS.items():
        for task in VTAB_TASKS:
            db.record_result(engine, sweep_id=sweep, backbone="vit_b", task=task, method=method, suite="vtab",
                             test_acc_mean=accuracy(method, task), seeds=[42], trainable_params=params)
    engine.dispose()
    return work


def test_the_default_table_fits_80_columns_with_full_names_and_params(work: Path) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    env.pop("ALORE_WORKDIR", None)
    done = subprocess.run([sys.executable, "-m", "alorectl.cli", "leaderboard", "--workdir", str(work)],
                          capture_output=True, text=True, env=env, timeout=300)  # piped, as in CI logs
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 80, "\n".join(lines)
    # No vertical rules (every character goes to names and numbers): a row is the method, then its cells.
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in METHODS}
    assert set(METHODS) <= set(rows), lines  # every method name whole, no "adapt…"
    for method, params in METHODS.items():
        shown = rows[method].split()[-1]
        assert float(shown) > 0 and "…" not in shown, (method, shown)
        assert abs(float(shown) - params / 1e6) <= 0.005 or float(shown) == float(f"{params / 1e6:.2g}")
    assert "Natural" in done.stdout and "All Mean" in done.stdout and "--wide" in done.stdout
    assert "CIFAR-100" not in done.stdout  # the task columns are --wide's


def test_wide_shows_every_task(work: Path) -> None:
    result = runner.invoke(app, ["leaderboard", "--workdir", str(work), "--wide"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "CIFAR-100" in result.output and "sNORB-Ele" in result.output


def test_csv_round_trips_to_the_databases_numbers(work: Path) -> None:
    result = runner.invoke(app, ["leaderboard", "--workdir", str(work), "--backbone", "vit_b", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert set(rows) == set(METHODS)
    for method, params in METHODS.items():
        row = rows[method]
        assert "*" not in "".join(row.values())
        for task in VTAB_TASKS:
            assert float(row[task]) == accuracy(method, task)  # exactly: no rounding
        assert float(row["all_mean"]) == fmean(accuracy(method, t) for t in VTAB_TASKS)
        assert float(row["params_m"]) * 1e6 == pytest.approx(params, rel=1e-12)


def test_json_carries_full_precision(work: Path) -> None:
    result = runner.invoke(app, ["leaderboard", "--workdir", str(work), "--format", "json"])
    assert result.exit_code == 0, result.output
    records = {r["method"]: r for r in json.loads(result.stdout)}
    assert records["alore"]["tasks"]["cifar"] == accuracy("alore", "cifar")


def test_several_backbones_name_the_choices(tmp_path: Path) -> None:
    work = tmp_path / "work"
    engine = db.connect(db_url(work))
    sweep = db.upsert_sweep(engine, "two", preset="vtab", suite="vtab", status="done")
    for backbone in ("vit_l", "vit_b"):
        db.record_result(engine, sweep_id=sweep, backbone=backbone, task="cifar", method="alore", suite="vtab",
                         test_acc_mean=50.0, seeds=[42])
    engine.dispose()
    result = runner.invoke(app, ["leaderboard", "--workdir", str(work)])
    assert result.exit_code == 2
    assert "error: results for 2 backbones; pick one with --backbone: vit_b, vit_l" in result.stderr
