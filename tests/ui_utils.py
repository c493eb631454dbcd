"""Shared by the ``alorectl ui`` tests: a tiny leaderboard store and a UI started as a real process.

The store is written by the sweep's own code (:func:`alorectl.tracking.board.publish`):
the leaderboard experiment ``alore/leaderboard · <backbone>``, one FINISHED run per
method, named by the method, with a rounded metric per task, the group means,
``all_mean``, ``group_mean``, ``params_m``, the chosen configuration per task as
parameters and links to the cell runs of the sweep ``alore/demo``.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALORECTL = [sys.executable, "-m", "alorectl.cli"]
SWEEP = "demo"
#: VTAB tasks in the benchmark's order (natural, natural, specialized, structured): not alphabetical.
TASKS = ("cifar", "svhn", "eurosat", "clevr_count")
OFFSETS = (1 / 3, 2 / 3, -1 / 3, -2 / 3)  # per task, around the method's mean: every value needs rounding
#: method -> all_mean rank order is alore > lora > bitfit (the deep link sorts by it).
METHODS = {"alore": 90.0, "lora": 85.0, "bitfit": 80.0}
START_TIMEOUT_S = 120.0  # a cold MLflow server start on a busy 2-core machine


def alorectl(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real command in its own process group: a ``ui`` that wrongly went on to exec cannot replace
    pytest, and what it started is stopped with it."""
    proc = subprocess.Popen([*ALORECTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ui_env(env), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


#: Settings from the environment that would point a command elsewhere than its test says.
#: ``BROWSER``/``DISPLAY``/``WAYLAND_DISPLAY``: ``alorectl ui`` would open a real browser on a desktop.
FOREIGN_ENV = ("MLFLOW_TRACKING_URI", "ALORE_WORKDIR", "ALORE_DB", "ALORE_DATA_ROOT", "RAY_ADDRESS", "BROWSER",
               "DISPLAY", "WAYLAND_DISPLAY")


def ui_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without stores or folders of its own (tests say which they mean), no telemetry."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
    return {**env, "MLFLOW_DISABLE_TELEMETRY": "true", **(extra or {})}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_board(backbone: str = "demo", run_ids: dict[tuple[str, str], str] | None = None) -> Any:
    """A ``db.Leaderboard`` as :func:`alorectl.results.leaderboard.build` makes it, in memory: :data:`METHODS`
    on :data:`TASKS` (VTAB groups), accuracies with thirds so that rounding shows (``mean + 1/3`` ...)."""
    from datetime import datetime, timezone
    from statistics import fmean

    from alorectl.db.leaderboard import Entry, Leaderboard, Row
    from alorectl.results.leaderboard import LABELS, known

    groups = {t: known("vtab")[t].group for t in TASKS}
    rows = []
    for rank, (method, mean) in enumerate(METHODS.items()):
        acc = {t: mean + off for t, off in zip(TASKS, OFFSETS)}
        group_means = {g: fmean(acc[t] for t in TASKS if groups[t] == g) for g in dict.fromkeys(groups.values())}
        entries = {t: Entry(task=t, method=method, test_acc_mean=acc[t], test_acc_std=None, n_seeds=1,
                            val_acc=acc[t] - 1, trainable_params=1000 * (rank + 1),
                            config={"lr": 0.01 * (rank + 1), "weight_decay": 0.0001}, epochs=3, seeds=[42],
                            sweep=SWEEP, mlflow_run_id=(run_ids or {}).get((method, t)), artifact_uri=None,
                            updated_at=datetime.now(timezone.utc)) for t in TASKS}
        rows.append(Row(method, acc, group_means, fmean(acc.values()), fmean(group_means.values()),
                           0.001 * (rank + 1), entries))
    # The CLI's row order (the paper's, here alphabetical stand-in) differs from the ranking by all_mean.
    rows.sort(key=lambda r: r.method)
    return Leaderboard(backbone, "vtab", TASKS, groups, tuple(rows), dict(LABELS))


def make_leaderboard_store(uri: str, backbone: str = "demo", artifacts: Path | None = None) -> str:
    """An MLflow store holding the sweep ``alore/<SWEEP>`` (a cell run per method and task) and its leaderboard,
    written by the sweep's own code (:func:`alorectl.tracking.board.publish`), and an unrelated experiment;
    the leaderboard's experiment id."""
    from mlflow import MlflowClient

    from alorectl.tracking.board import publish
    from alorectl.tracking.client import Tracker
    from alorectl.tracking.observer import experiment_name, leaderboard_name

    if artifacts is None:  # beside an SQLite store; never ./mlruns, MLflow's default
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    client = MlflowClient(uri)
    client.create_experiment("someone-else", artifact_location=(artifacts / "someone-else").as_uri())  # not alore's:
    tracker = Tracker(uri, artifact_root=artifacts)                             # `alorectl ui` must not list it
    sweep = tracker.experiment(experiment_name(SWEEP))
    run_ids = {}
    for method in METHODS:
        for task in TASKS:
            run = client.create_run(sweep, run_name=f"{method} · {task}", tags={"method": method, "task": task})
            client.set_terminated(run.info.run_id, "FINISHED")
            run_ids[(method, task)] = run.info.run_id
    experiment = tracker.experiment(leaderboard_name(backbone))
    publish(tracker, make_board(backbone, run_ids), experiment, "vtab", marks={}, sweep=SWEEP)
    return experiment


@dataclass
class RunningUI:
    proc: subprocess.Popen
    log: Path
    base_url: str

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """``(address, port)`` of every TCP socket in LISTEN state that one of ``pids`` holds (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue  # ended while we looked
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].rsplit(":", 1)
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw),
                              int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def wait_http(url: str, proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
    from alorectl.tracking.browser import answers

    if answers(url, timeout, alive=lambda: proc.poll() is None):
        return
    if proc.poll() is not None:
        raise RuntimeError(f"the UI process exited with {proc.returncode} before serving {url}")
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_mlflow_server(store: Path, port: int, cwd: Path | None = None) -> subprocess.Popen:
    """A plain ``mlflow server`` on a SQLite store at 127.0.0.1:``port`` (its own session), once it answers.
    It keeps the artifacts it is sent in ``<cwd>/mlartifacts`` (``cwd``: the store's folder by default)."""
    from mlflow import MlflowClient

    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd or store.parent,
                            start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            MlflowClient(f"http://127.0.0.1:{port}").search_experiments()
            return proc
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server exited") from None
            time.sleep(1)
    stop(proc)
    raise RuntimeError("mlflow server did not start")


@contextmanager
def running_ui(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[RunningUI]:
    """``alorectl ui --port <free> *args`` as a real process (its own session), stopped afterwards."""
    port = free_port()
    log = tmp / f"ui-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*ALORECTL, "ui", "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=ui_env(env), start_new_session=True)
    ui = RunningUI(proc, log, f"http://127.0.0.1:{port}")
    try:
        wait_http(ui.base_url + "/health", proc)
        yield ui
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the UI's process group (MLflow forwards it to uvicorn), SIGKILL what is left after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (a worker still shutting down)
    except ProcessLookupError:
        pass
    proc.communicate() if proc.stdout else proc.wait()
