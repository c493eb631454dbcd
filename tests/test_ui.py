"""``alorectl ui``: a checked port, deep links, one lean MLflow server, no credentials in sight.

The server tests start the real command as a process on a free port and read
``/proc``: after ``os.execvpe`` the ``alorectl`` pid *is* the MLflow server, so
its tree is exactly what the UI costs. The PostgreSQL case (a store URI with a
password) runs against ``ALORE_TEST_POSTGRES_URL`` like the db/ suite: skipped
locally without it, a failure under CI.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alorectl.ui_links import VIEW_ID, experiment_url
from ui_utils import alorectl, cmdline, free_port, make_leaderboard_store, process_tree, running_ui



# ---------------------------------------------------------------- flags


@pytest.mark.parametrize("port", ["99999", "0"])
def test_port_out_of_range_is_one_line_and_exit_2(port: str, tmp_path: Path) -> None:
    done = alorectl("ui", "--workdir", str(tmp_path), "--port", port, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--port {port}" in lines[0] and "1-65535" in lines[0], done.stderr


def test_missing_store_is_one_line_not_a_new_empty_store(tmp_path: Path) -> None:
    done = alorectl("ui", "--workdir", str(tmp_path / "work"), "--port", str(free_port()), timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no MLflow store" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


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
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or ::


def test_prints_a_runs_table_link_per_alore_experiment(ui_server) -> None:
    ui, _, board = ui_server
    out = ui.output()
    assert "alore/leaderboard/demo" in out
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


# ---------------------------------------------------------------- a store URI with a password (PostgreSQL)


@pytest.mark.parametrize("via", ["flag", "env"])
def test_store_password_never_reaches_argv_or_output(scratch_postgres_url: str, tmp_path: Path, via: str) -> None:
    from sqlalchemy.engine import make_url

    password = make_url(scratch_postgres_url).password
    assert password
    board = make_leaderboard_store(scratch_postgres_url)
    args, env = (["--tracking-uri", scratch_postgres_url], {}) if via == "flag" else (
        [], {"MLFLOW_TRACKING_URI": scratch_postgres_url})
    with running_ui(tmp_path, *args, env=env) as ui:
        # The server really reached the database with the password it got through its environment ...
        query = urllib.parse.urlencode({"experiment_name": "alore/leaderboard/demo"})
        with urllib.request.urlopen(f"{ui.base_url}/api/2.0/mlflow/experiments/get-by-name?{query}") as reply:
            assert json.load(reply)["experiment"]["experiment_id"] == board
        # ... and no process of the UI shows it to `ps`, and nothing printed holds it.
        tree = process_tree(ui.proc.pid)
        assert len(tree) >= 2
        assert not [cmdline(p) for p in tree if password in cmdline(p)]
        assert experiment_url(ui.base_url, board, view=VIEW_ID) in ui.output().split()
        assert password not in ui.output()
