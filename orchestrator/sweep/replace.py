"""``sweep run --force-new``: a sweep name started afresh, under the sweep's lock.

Safe means: only that sweep's own things go (its database rows, its Tune experiment folder), nothing half
done is left behind by an interruption, and a fresh run cannot pick up the old one's trials or searcher state.
The experiment folder is first renamed aside (one atomic rename: the name's folder is then free), the rows are
deleted in one statement (cells, trials and results cascade), and only then the old folder is removed. Killed
in between, a rerun with ``--force-new`` finishes the job. MLflow keeps the old runs (they are history, and the
leaderboard table there is rebuilt from the database).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from alorectl import db

from . import experiment as run

ASIDE = ".replaced-"


def replace_sweep(engine: Any, workdir: Path, sweep: str) -> None:
    folder = run.experiment_dir(workdir, sweep)
    storage = run.storage(workdir)
    if folder.exists():
        folder.rename(storage / f"{ASIDE}{sweep}-{time.time_ns()}")
    db.delete_sweep(engine, sweep)
    prefix = f"{ASIDE}{sweep}-"
    for old in storage.glob(f"{prefix}*"):
        if old.name[len(prefix):].isdigit() and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
