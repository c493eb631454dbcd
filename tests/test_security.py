"""Security, in one module: credentials are never shown or stored, the work folder is a trust boundary (it
holds Ray Tune's pickles), no name builds a path out of it, services listen on 127.0.0.1 only, nothing is
unpickled from a file.

Real services throughout: a real sweep on local Ray logging to a real MLflow server and a PostgreSQL
leaderboard, both URIs carrying a password; a real ``alorectl ui`` process. The PostgreSQL cases use
``ALORE_TEST_POSTGRES_URL`` like the db/ suite (skipped locally without it, a failure under CI). Every
refusal happens before anything is unpickled, started or written. The CLI's other bad input is the table
of tests/test_cli_bad_input.py.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from alorectl import db
from alorectl.cli import app
from alorectl.db.urls import mask_text
from alorectl.tracking.links import VIEW_ID, experiment_url
from alorectl.tracking.observer import leaderboard_name
from alorectl.tracking.client import flatten
from attacks import Planted
from ui_utils import (alorectl, cmdline, free_port, is_loopback, listening, make_leaderboard_store, process_tree,
                      running_ui, start_mlflow_server, stop)

pytestmark = pytest.mark.slow  # sweeps or servers end to end: not in `make check`

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def tiny_preset(demo_dir: Path, **changes) -> dict:
    return {"suite": "vtab", "data_root": str(demo_dir / "vtab-1k"),
            "weights": {"demo": str(demo_dir / "demo.safetensors")}, "backbones": ["demo"], "tasks": ["digits"],
            "methods": ["linear"], **changes}


# ---------------------------------------------------------------- passwords


class Watch(threading.Thread):
    """While a command runs in this process (CliRunner runs it in-process, so this process is the driver):
    the command line of this process and of everything it starts (Ray's GCS, raylet, workers), and the
    listening sockets of each, sampled every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.cmdlines: set[str] = set()
        self.sockets: set[tuple[str, str, int]] = set()  # (the process's command line, address, port)
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            for pid in process_tree(os.getpid()):
                line = cmdline(pid)
                self.cmdlines.add(line)
                self.sockets.update((line, address, port) for address, port in listening([pid]))

    def __enter__(self) -> Watch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.join()


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]


@pytest.fixture
def leaderboard_url(request, tmp_path) -> tuple[str, str | None]:
    """The sweep's database and its password: PostgreSQL where the test server is (always under CI); locally
    without it SQLite, so the MLflow, Ray and file checks still run."""
    if os.environ.get("ALORE_TEST_POSTGRES_URL") or os.environ.get("CI"):  # conftest.PG_ENV
        url = request.getfixturevalue("scratch_postgres_url")
        return url, make_url(url).password
    return f"sqlite:///{tmp_path / 'board.db'}", None


def test_a_sweep_never_shows_or_stores_its_passwords(leaderboard_url, demo_dir, tmp_path) -> None:
    """MLflow and database passwords stay out of every output, file, MLflow param/tag, database column and
    process command line; every server the sweep starts listens on loopback only; the work folder is
    owner-only."""
    import ray

    db_url, db_secret = leaderboard_url
    mlflow_secret = "Mlfl0w-S3cret"
    server_dir, port = tmp_path / "server", free_port()
    server_dir.mkdir()
    # No auth on this server: it ignores the credentials, which must still never show.
    server = start_mlflow_server(server_dir / "mlflow.db", port)  # its artifacts: server_dir/mlartifacts
    uri = f"http://alice:{mlflow_secret}@127.0.0.1:{port}"
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(tiny_preset(demo_dir, methods=["alore"], search={"trials": 1},
                                                 space={"lr": [0.01], "weight_decay": [0.001]},
                                                 train={"epochs": 1, "warmup_epochs": 0})))
    work = tmp_path / "work"
    common = ["--workdir", str(work), "--db", db_url]
    try:
        with Watch() as watch:
            swept = runner.invoke(app, ["sweep", str(preset), "--name", "sec", "--tracking-uri", uri, *common])
        assert swept.exit_code == 0, swept.output
        outputs = [swept.output, swept.stderr]
        for argv in (["sweep", "status", "sec"], ["leaderboard", "--backbone", "demo"],
                     ["export", "--backbone", "demo", "--task", "digits", "--out", str(tmp_path / "export"),
                      "--tracking-uri", uri]):
            done = runner.invoke(app, [*argv, *common])
            assert done.exit_code == 0, done.output
            outputs += [done.output, done.stderr]
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiments = client.search_experiments()
        runs = [run for exp in experiments for run in client.search_runs([exp.experiment_id], max_results=1000)]
    finally:
        ray.shutdown()
        stop(server)
    secrets = [s for s in (mlflow_secret, db_secret) if s]

    # Ray really ran under the watch, and none of its processes shows a password to `ps` ...
    ray_servers = [(address, port) for line, address, port in watch.sockets
                   if "gcs_server" in line or "raylet" in line]
    assert ray_servers, "the watch saw Ray's GCS and raylet listen"
    for secret in secrets:
        assert not [c for c in watch.cmdlines if secret in c]
    # ... nor listens beyond this machine.
    assert all(is_loopback(address) for _, address, _ in watch.sockets), sorted(watch.sockets)
    for folder in (work, work / "ray"):
        assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0, oct(folder.stat().st_mode)

    assert len(runs) >= 3, "cell, trials and the leaderboard were logged"
    sessions = {m.group(1) for c in watch.cmdlines for m in [re.search(r"--session_dir=(\S+)", c)] if m}
    logs = files_under(*map(Path, sessions))  # Ray's own logs of this sweep
    assert len(sessions) == 1 and logs, sessions
    for secret in secrets:
        assert not [o for o in outputs if secret in o]
        for exp in experiments:
            assert secret not in repr(exp.tags)
        for run in runs:
            assert secret not in repr(run.data.params) + repr(run.data.tags) + repr(run.info.run_name)
        for path in [*files_under(work, server_dir, tmp_path / "export"), *logs]:  # server_dir: store, artifacts
            assert secret.encode() not in path.read_bytes(), path
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            assert {"sweep", "cell", "trial", "result"} <= set(tables)
            for table in tables:
                rows = repr(conn.execute(text(f'SELECT * FROM "{table}"')).fetchall())
                assert not [s for s in secrets if s in rows], table
    finally:
        engine.dispose()


@pytest.mark.parametrize("via", ["flag", "env"])
def test_ui_keeps_the_store_password_off_every_command_line(scratch_postgres_url: str, tmp_path: Path,
                                                            via: str) -> None:
    password = make_url(scratch_postgres_url).password
    assert password
    board = make_leaderboard_store(scratch_postgres_url, artifacts=tmp_path / "artifacts")
    args, env = (["--tracking-uri", scratch_postgres_url], {}) if via == "flag" else (
        [], {"MLFLOW_TRACKING_URI": scratch_postgres_url})
    with running_ui(tmp_path, *args, env=env) as ui:
        # The server really reached the database with the password it got through its environment ...
        query = urllib.parse.urlencode({"experiment_name": leaderboard_name("demo")})
        with urllib.request.urlopen(f"{ui.base_url}/api/2.0/mlflow/experiments/get-by-name?{query}") as reply:
            assert json.load(reply)["experiment"]["experiment_id"] == board
        # ... and no process of the UI shows it to `ps` (/proc/<pid>/cmdline), and nothing printed holds it.
        tree = process_tree(ui.proc.pid)
        assert len(tree) >= 2
        assert not [cmdline(p) for p in tree if password in cmdline(p)]
        assert experiment_url(ui.base_url, board, view=VIEW_ID) in ui.output().split()
        assert password not in ui.output()


def test_a_password_typed_on_the_command_line_is_warned_about_and_never_echoed() -> None:
    url = "postgresql+psycopg://alice:Typed-S3cret@127.0.0.1:1/alore"  # nothing listens on port 1
    typed = alorectl("leaderboard", "--backbone", "demo", "--db", url)
    from_env = alorectl("leaderboard", "--backbone", "demo", env={"ALORE_DB": url})
    for done in (typed, from_env):
        assert done.returncode == 2 and "cannot reach database" in done.stderr, done.stderr
        assert "Typed-S3cret" not in done.stdout + done.stderr
    assert "warning: a password on the command line can be seen by every user" in typed.stderr
    assert "warning" not in from_env.stderr


@pytest.mark.parametrize("uri,secret", [
    ("http://bob:hunter2@mlflow:5000", "hunter2"),
    ("postgresql+psycopg://alice:s3cret@db.internal:5432/alore", "s3cret"),
    ("postgresql+psycopg://alice:pa@ss@db.internal:5432/alore", "pa@ss"),  # a raw '@' in the password
])
def test_masking_hides_the_whole_password(uri: str, secret: str) -> None:
    assert secret not in mask_text(f"cannot reach {uri}: timeout")
    params = flatten({"db": uri, "nested": {"uri": uri}})
    assert secret not in repr(params) and "***" in params["db"]


# ---------------------------------------------------------------- the work folder is a trust boundary


@pytest.fixture
def recorded(tmp_path, demo_dir):
    """A work folder whose database records sweep 'old', and a planted experiment folder for it."""
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    engine = db.connect(f"sqlite:///{work / 'leaderboard.db'}")
    db.upsert_sweep(engine, "old", preset="old", suite="vtab", status="interrupted",
                    config={**tiny_preset(demo_dir), "name": "old", "trials": 1, "epochs": 1})
    engine.dispose()
    experiment = work / "ray" / "old"
    experiment.mkdir(parents=True, mode=0o700)
    os.chmod(work / "ray", 0o700)
    marker = tmp_path / "pwned"
    (experiment / "tuner.pkl").write_bytes(pickle.dumps(Planted(str(marker))))
    return work, experiment, marker


def resume_old(work: Path):
    return runner.invoke(app, ["sweep", "resume", "old", "--workdir", str(work)])


def test_a_world_writable_experiment_folder_is_refused_before_unpickling(recorded) -> None:
    work, experiment, marker = recorded
    os.chmod(experiment, 0o777)
    result = resume_old(work)
    assert result.exit_code == 2, result.output
    assert "writable by group or others" in result.stderr and "chmod go-w" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists(), "the planted pickle never ran"


def test_a_planted_group_writable_pickle_is_refused(recorded) -> None:
    work, experiment, marker = recorded
    os.chmod(experiment / "tuner.pkl", 0o664)
    result = resume_old(work)
    assert result.exit_code == 2 and "tuner.pkl" in result.stderr and not marker.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_an_experiment_folder_owned_by_another_user_is_refused(recorded) -> None:
    work, experiment, marker = recorded
    os.chown(experiment, 65534, 65534)  # nobody
    result = resume_old(work)
    assert result.exit_code == 2 and "not by you" in result.stderr and not marker.exists()


def test_rerunning_a_recorded_sweep_checks_its_folder_too(recorded, demo_dir, tmp_path) -> None:
    work, experiment, marker = recorded
    os.chmod(experiment, 0o777)
    preset = tmp_path / "p.yaml"  # the recorded plan (1 trial, 1 epoch): a rerun that continues it
    preset.write_text(yaml.safe_dump(tiny_preset(demo_dir, search={"trials": 1}, train={"epochs": 1})))
    result = runner.invoke(app, ["sweep", str(preset), "--name", "old", "--workdir", str(work)])
    assert result.exit_code == 2 and "writable by group or others" in result.stderr, result.output
    assert not marker.exists()


def test_an_unrecorded_sweep_never_restores_a_folder_it_finds(recorded, demo_dir, tmp_path) -> None:
    work, experiment, marker = recorded
    (work / "ray" / "fresh").mkdir(mode=0o700)
    (work / "ray" / "fresh" / "tuner.pkl").write_bytes((experiment / "tuner.pkl").read_bytes())
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(tiny_preset(demo_dir)))
    result = runner.invoke(app, ["sweep", str(preset), "--name", "fresh", "--workdir", str(work)])
    assert result.exit_code == 2 and "not recorded in the database" in result.stderr
    assert not marker.exists()


def test_new_work_folders_are_owner_only(tmp_path) -> None:
    from alorectl.security import make_private

    make_private(tmp_path / "w" / "ray")
    for p in (tmp_path / "w", tmp_path / "w" / "ray"):
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, oct(p.stat().st_mode)


# ---------------------------------------------------------------- no name builds a path out of its folder

ESCAPES = ["..", "../up", "/abs", "vit_tiny_patch16_224./../../esc"]  # more shapes: test_preset's check_name table
#: every place a user names something a path is built from: the sweep, backbones (flag, preset and the
#: weights mapping's keys), tasks, methods; and the sweep named to `sweep resume` / `sweep status` below.
NAME_INPUTS = {
    "--name": lambda v: (["--name", v], {}),
    "--backbones": lambda v: (["--backbones", v], {}),
    "--tasks": lambda v: (["--tasks", v], {}),
    "--methods": lambda v: (["--methods", v], {}),
    "preset methods": lambda v: ([], {"methods": [v]}),
    "preset backbones": lambda v: ([], {"backbones": [v]}),
    "preset weights key": lambda v: ([], {"weights": {v: "w.safetensors"}}),
    "preset tasks": lambda v: ([], {"tasks": [v]}),
}


@pytest.mark.parametrize("value", ESCAPES)
@pytest.mark.parametrize("where", sorted(NAME_INPUTS))
def test_no_name_escapes_the_work_folder(where, value, tmp_path, demo_dir) -> None:
    flags, changes = NAME_INPUTS[where](value)
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump(tiny_preset(demo_dir, **changes)))
    result = runner.invoke(app, ["sweep", str(preset), *flags, "--workdir", str(tmp_path / "deep" / "work")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert repr(value) in result.stderr or value in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.yaml"], "nothing written anywhere"


@pytest.mark.parametrize("command", ["resume", "status"])
@pytest.mark.parametrize("value", ESCAPES)
def test_a_sweep_named_to_resume_or_status_cannot_escape(command, value, recorded, tmp_path) -> None:
    work, experiment, marker = recorded
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, ["sweep", command, value, "--workdir", str(work)])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and value in result.stderr, result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before and not marker.exists()


#: the other commands that take a name: each is refused (unknown, or an unsafe name) before any path is used
OTHER_COMMANDS = {
    "train --task": ["train", "--backbone", "demo", "--weights", "{w}", "--data-root", "{data}", "--task", "{v}",
                     "--out", "{out}"],
    "train --method": ["train", "--backbone", "demo", "--weights", "{w}", "--data-root", "{data}", "--task",
                       "digits", "--method", "{v}", "--out", "{out}"],
    "export --backbone": ["export", "--backbone", "{v}", "--task", "digits", "--out", "{out}", "--workdir", "{work}"],
    "export --task": ["export", "--backbone", "demo", "--task", "{v}", "--out", "{out}", "--workdir", "{work}"],
    "analyze --task": ["analyze", "experts", "--backbone", "demo", "--task", "{v}", "--workdir", "{work}"],
}


@pytest.mark.parametrize("value", ["../../t", "/abs"])
@pytest.mark.parametrize("where", sorted(OTHER_COMMANDS))
def test_other_commands_refuse_names_that_escape(where, value, recorded, demo_dir, tmp_path) -> None:
    work, experiment, marker = recorded
    outside = tmp_path / "t"  # what '../../t' would reach from a task folder: split files planted there
    outside.mkdir()
    for split in ("train800", "val200", "train800val200", "test"):
        (outside / f"{split}.txt").write_text("images/0.png 0\n")
    argv = [a.format(v=value, w=demo_dir / "demo.safetensors", data=demo_dir / "vtab-1k", work=work,
                     out=tmp_path / "out") for a in OTHER_COMMANDS[where]]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and value in result.stderr, result.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before and not marker.exists()


# ---------------------------------------------------------------- services on loopback only


def test_an_embedded_ray_listens_on_loopback_only(tmp_path) -> None:
    """Ray's GCS, raylet, object manager, runtime-env agent and every worker: nothing on 0.0.0.0 or ::."""
    import ray

    from alorectl.sweep.experiment import RAY_CLUSTER_SWITCH_ENV, start_ray

    from ray._private import ray_constants

    before, before_flag = os.environ.get(RAY_CLUSTER_SWITCH_ENV), ray_constants.ENABLE_RAY_CLUSTER
    start_ray(None, tmp_path / "logs")
    try:
        @ray.remote
        def pid() -> int:
            return os.getpid()

        workers = ray.get([pid.remote() for _ in range(2)])
        tree = process_tree(os.getpid())
        assert set(workers) <= set(tree)
        sockets = listening(tree)
        assert len(sockets) >= 4, sockets  # GCS, raylet (2), the driver's and the workers' servers
        assert all(is_loopback(address) for address, _ in sockets), sockets
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    finally:
        ray.shutdown()
    # Only that start was single-host: a `ray start` or a cluster driver run later sees the host's IP.
    assert os.environ.get(RAY_CLUSTER_SWITCH_ENV) == before
    assert ray_constants.ENABLE_RAY_CLUSTER == before_flag


# ---------------------------------------------------------------- nothing unpickled from a file


def test_no_unsafe_deserialization_in_the_code() -> None:
    for path in [*ROOT.glob("alore/**/*.py"), *ROOT.glob("orchestrator/**/*.py"), *ROOT.glob("db/**/*.py")]:
        code = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(", code), path
        for match in re.finditer(r"torch\.load\(", code):
            depth, end = 1, match.end()
            while depth:  # the call's own closing parenthesis
                depth += {"(": 1, ")": -1}.get(code[end], 0)
                end += 1
            call = code[match.start():end]
            assert "weights_only=True" in call, (path, call)
