"""The installed wheel works anywhere: presets inside it, only import names this project owns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs the wheel: not in `make check`

ROOT = Path(__file__).resolve().parents[1]


def source_tree(dest: Path) -> Path:
    """The checkout's files (tracked or not, less what git ignores): no stale build/ folder to hide a
    file the packaging forgot."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def test_the_wheel_ships_its_presets_and_runs_outside_the_checkout(tmp_path) -> None:
    src = source_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("alore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("alore-")} == {"alore", "alorectl"}, \
        "no top-level db, orchestrator or sweeps to shadow other distributions"
    assert {"alorectl/sweeps/vtab.yaml", "alorectl/sweeps/fgvc.yaml", "alorectl/sweeps/demo.yaml"} <= set(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path; the dependencies come from this environment.
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import alorectl, alore; print(alorectl.__file__, alore.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.count(str(target)) == 2, where
    plan = subprocess.run([sys.executable, "-m", "alorectl.cli", "sweep", "vtab", "--backbones", "vit_b",
                           "--dry-run", "--gpus", "8", "--workdir", str(elsewhere / "w")],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "114 cells" in " ".join(plan.stdout.split()), plan.stdout[-2000:]
    unknown = subprocess.run([sys.executable, "-m", "alorectl.cli", "sweep", "vtabb", "--dry-run"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)
    assert unknown.returncode == 2 and "valid choices: demo, fgvc, vtab" in unknown.stderr
    assert not (elsewhere / "w").exists()
