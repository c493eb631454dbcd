"""The work folder is a trust boundary (it holds Ray Tune's pickles), and names cannot escape it.

No Ray starts here: every refusal happens before anything is unpickled, started or written.
"""

from __future__ import annotations

import os
import pickle
import stat

import pytest
import yaml
from typer.testing import CliRunner

from alorectl import db
from alorectl.cli import app

runner = CliRunner()


class Planted:
    """What an attacker writes as tuner.pkl: unpickling it creates a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def recorded(tmp_path, demo_dir):
    """A work folder whose database records sweep 'old', and a planted experiment folder for it."""
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    preset = {"name": "old", "suite": "vtab", "data_root": str(demo_dir / "vtab-1k"), "backbones": ["demo"],
              "tasks": ["digits"], "methods": ["linear"], "trials": 1, "epochs": 1,
              "weights": {"demo": str(demo_dir / "demo.safetensors")}}
    engine = db.connect(f"sqlite:///{work / 'leaderboard.db'}")
    db.upsert_sweep(engine, "old", preset="old", suite="vtab", config=preset, status="interrupted")
    engine.dispose()
    experiment = work / "ray" / "old"
    experiment.mkdir(parents=True, mode=0o700)
    os.chmod(work / "ray", 0o700)
    marker = tmp_path / "pwned"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Planted(str(marker))))
    return work, experiment, marker


def test_a_world_writable_experiment_folder_is_refused_before_unpickling(recorded) -> None:
    work, experiment, marker = recorded
    os.chmod(experiment, 0o777)
    result = runner.invoke(app, ["sweep", "resume", "old", "--workdir", str(work)])
    assert result.exit_code == 2, result.output
    assert "writable by group or others" in result.stderr and "chmod go-w" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists(), "the planted pickle never ran"


def test_a_planted_group_writable_pickle_is_refused(recorded) -> None:
    work, experiment, marker = recorded
    os.chmod(experiment / "tuner.pkl", 0o664)
    result = runner.invoke(app, ["sweep", "resume", "old", "--workdir", str(work)])
    assert result.exit_code == 2 and "tuner.pkl" in result.stderr and not marker.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_an_experiment_folder_owned_by_another_user_is_refused(recorded) -> None:
    work, experiment, marker = recorded
    os.chown(experiment, 65534, 65534)  # nobody
    result = runner.invoke(app, ["sweep", "resume", "old", "--workdir", str(work)])
    assert result.exit_code == 2 and "not by you" in result.stderr and not marker.exists()


def test_an_unrecorded_sweep_never_restores_a_folder_it_finds(recorded, demo_dir, tmp_path) -> None:
    work, experiment, marker = recorded
    (work / "ray" / "fresh").mkdir(mode=0o700)
    (work / "ray" / "fresh" / "tuner.pkl").write_bytes((experiment / "tuner.pkl").read_bytes())
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"suite": "vtab", "data_root": str(demo_dir / "vtab-1k"),
                                      "weights": {"demo": str(demo_dir / "demo.safetensors")},
                                      "backbones": ["demo"], "tasks": ["digits"], "methods": ["linear"]}))
    result = runner.invoke(app, ["sweep", str(preset), "--name", "fresh", "--workdir", str(work)])
    assert result.exit_code == 2 and "not recorded in the database" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("flag,value", [
    ("--name", ".."), ("--name", "a/b"), ("--name", "../up"), ("--name", "x__y"),
    ("--backbones", "vit_tiny_patch16_224./../../esc"), ("--tasks", "../t"), ("--methods", "a/b"),
])
def test_names_that_could_escape_the_work_folder_are_refused(tmp_path, demo_dir, flag, value) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"suite": "vtab", "data_root": str(demo_dir / "vtab-1k"),
                                      "weights": {"demo": str(demo_dir / "demo.safetensors")},
                                      "backbones": ["demo"], "tasks": ["digits"], "methods": ["linear"]}))
    work = tmp_path / "deep" / "work"
    result = runner.invoke(app, ["sweep", str(preset), flag, value, "--workdir", str(work)])
    assert result.exit_code == 2, result.output
    assert value in result.stderr or repr(value) in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "deep").exists(), "nothing written anywhere"


def test_new_work_folders_are_owner_only(tmp_path) -> None:
    from alorectl.run import make_private

    make_private(tmp_path / "w" / "ray")
    for p in (tmp_path / "w", tmp_path / "w" / "ray"):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, oct(p.stat().st_mode)


def test_an_unreachable_ray_address_is_one_line_and_writes_nothing(tmp_path, demo_dir) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({"suite": "vtab", "data_root": str(demo_dir / "vtab-1k"),
                                      "weights": {"demo": str(demo_dir / "demo.safetensors")},
                                      "backbones": ["demo"], "tasks": ["digits"], "methods": ["linear"]}))
    result = runner.invoke(app, ["sweep", str(preset), "--address", "127.0.0.1:1", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.stderr
    assert not (tmp_path / "w").exists(), "no database, no sweep row"
