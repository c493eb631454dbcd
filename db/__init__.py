"""The results database of alore's sweeps: schema, sessions, writes, leaderboard.

SQLAlchemy 2 models (:mod:`db.models`) with Alembic migrations shipped in
``db/migrations`` and applied by :func:`connect`; SQLite by default,
PostgreSQL via ``postgresql+psycopg://``.  Writes (:mod:`db.writes`) are
idempotent upserts keyed by each table's unique constraint.  Imports neither
torch nor Ray (nor ``alore``): the orchestrator is its only writer.

    engine = connect("sqlite:///work/alore.db")
    sweep_id = upsert_sweep(engine, "vtab-2025-06", preset="vtab", suite="vtab", status="running")
    cell_id = upsert_cell(engine, sweep_id, "vit_b", "cifar", "alore")
    record_trial(engine, cell_id, "a1b2c3", protocol="search", val_acc=71.5)
    ...
    board = leaderboard(engine, "vit_b", suite="vtab", groups=VTAB_GROUPS)
    print(to_markdown(board))

Commands that only read open the store with :func:`open_existing` (never
creates or migrates it) and find rows with :mod:`db.lookup`::

    engine = open_existing("sqlite:///work/alore.db")
    row = find_result(engine, "vit_b", "cifar", "best")   # chosen by val accuracy
"""

from alorectl.db.errors import (
    DatabaseError,
    DatabaseNotFoundError,
    DatabaseUnavailableError,
    DatabaseURLError,
    SchemaVersionError,
    SweepNotFoundError,
    UnknownResultError,
)
from alorectl.db.leaderboard import Leaderboard, leaderboard, to_csv, to_json, to_markdown, to_records, to_rows
from alorectl.db.lookup import find_result, result_backbones, result_suites, result_tasks, simulated_only
from alorectl.db.session import Bind, connect, open_existing, sessions
from alorectl.db.status import SweepStatus, TrialRow, results_of, sweep_config, sweep_names, sweep_status, sweep_trials
from alorectl.db.urls import mask_url, parse_db_url
from alorectl.db.writes import (delete_sweep, record_result, record_trial, set_cell_status, set_result_run, set_sweep_status, upsert_cell,
                       upsert_sweep)

__all__ = [
    "Bind",
    "DatabaseError",
    "delete_sweep",
    "DatabaseNotFoundError",
    "DatabaseURLError",
    "DatabaseUnavailableError",
    "Leaderboard",
    "SchemaVersionError",
    "SweepNotFoundError",
    "SweepStatus",
    "UnknownResultError",
    "connect",
    "find_result",
    "leaderboard",
    "mask_url",
    "open_existing",
    "parse_db_url",
    "record_result",
    "record_trial",
    "result_backbones",
    "result_suites",
    "result_tasks",
    "sessions",
    "simulated_only",
    "set_cell_status",
    "set_sweep_status",
    "sweep_names",
    "sweep_status",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_records",
    "to_rows",
    "upsert_cell",
    "TrialRow",
    "results_of",
    "set_result_run",
    "sweep_config",
    "sweep_trials",
    "upsert_sweep",
]
