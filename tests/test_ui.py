"""``alorectl ui``: deep links, one lean MLflow server, no credentials in sight (its bad flags are rows of
tests/test_cli_bad_input.py).

The server tests start the real command as a process on a free port and read
``/proc``: after ``os.execvpe`` the ``alorectl`` pid *is* the MLflow server, so
its tree is exactly what the UI costs. A store URI with a password (PostgreSQL)
kept off every command line is in tests/test_security.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alorectl.tracking.links import VIEW_ID, experiment_url
from alorectl.tracking.observer import leaderboard_name
from ui_utils import alorectl, cmdline, is_loopback, listening, make_leaderboard_store, process_tree, running_ui

pytestmark = pytest.mark.slow  # sweeps or servers end to end: not in `make check`


# ---------------------------------------------------------------- the running server (SQLite store)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    board = make_leaderboard_store(uri)
    with running_ui(tmp, "--tracking-uri", uri) as ui:
        yield ui, uri, board


def test_ui_becomes_the_mlflow_server(ui_server) -> None:
    ui, _, _ = ui_server
    assert "-m mlflow server" in cmdline(ui.proc.pid)  # the pid alorectl started with: exec'd, no idle parent
    assert not [p for p in process_tree(ui.proc.pid) if "alorectl.cli" in cmdline(p)]


def test_one_worker_and_no_queue_consumers(ui_server) -> None:
    ui, _, _ = ui_server
    tree = process_tree(ui.proc.pid)
    lines = [cmdline(p) for p in tree]
    # mlflow server -> one uvicorn process that serves in-process (one worker, no worker children)
    assert len(tree) == 2, lines
    assert "-m uvicorn" in lines[1] and "--workers 1 " in lines[1]
    assert not [line for line in lines if "huey" in line or "_job_runner" in line]


def test_binds_loopback_only(ui_server) -> None:
    ui, _, _ = ui_server
    port = int(ui.base_url.rsplit(":", 1)[1])
    sockets = listening(process_tree(ui.proc.pid))
    assert ("127.0.0.1", port) in sockets
    assert all(is_loopback(address) for address, _ in sockets), sockets  # nothing on 0.0.0.0 or ::


def test_prints_a_runs_table_link_per_alore_experiment(ui_server) -> None:
    ui, _, board = ui_server
    out = ui.output()
    assert leaderboard_name("demo") in out
    # No browser on this machine (no $BROWSER, no display): said so, the printed link is the way in.
    assert "no web browser to open here: open the leaderboard link above" in out
    assert experiment_url(ui.base_url, board, view=VIEW_ID) in out.split()
    assert "someone-else" not in out


def test_store_uri_stays_off_the_command_line(ui_server) -> None:
    ui, uri, _ = ui_server
    path = uri.removeprefix("sqlite:///")
    assert not [p for p in process_tree(ui.proc.pid) if path in cmdline(p)]


@pytest.mark.parametrize("via", ["flag", "env"])
def test_http_tracking_uri_prints_links_without_the_password(ui_server, via: str) -> None:
    """An MLflow server URI: the links point at it, the credentials go to MLflow's env variables, not the screen."""
    ui, _, board = ui_server
    secret = f"pw-{uuid.uuid4().hex}"
    uri = ui.base_url.replace("http://", f"http://alice:{secret}@")
    args, env = (["--tracking-uri", uri], {}) if via == "flag" else ([], {"MLFLOW_TRACKING_URI": uri})
    done = alorectl("ui", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert experiment_url(ui.base_url, board, view=VIEW_ID) in done.stdout.split()
    assert secret not in done.stdout + done.stderr


def test_prints_the_optuna_dashboard_command_of_the_work_folders_studies(ui_server, tmp_path) -> None:
    from alorectl.sweep.studies import dashboard_command, open_journal

    ui, _, _ = ui_server
    done = alorectl("ui", "--tracking-uri", ui.base_url, "--workdir", str(tmp_path))
    assert done.returncode == 0 and "optuna-dashboard" not in done.stdout, "no studies, no command"
    open_journal(tmp_path)
    done = alorectl("ui", "--tracking-uri", ui.base_url, "--workdir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert dashboard_command(tmp_path) in [line.strip() for line in done.stdout.splitlines()]
