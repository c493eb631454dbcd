"""A real multi-node Ray cluster on localhost, and the pokes a fault test needs.

Each node is its own ``ray start`` (head, then ``--address``) with one CPU, a custom resource
naming it, its own ``--temp-dir`` and explicit free ports, so several clusters (and the local Ray
instances other tests start) can live on one machine. Token authentication uses a private token
file: Ray >= 2.5x turns token auth on for ``ray start --head`` when ``~/.ray/auth_token`` exists,
and a node or driver that joins must then present the same token.

Teardown never uses ``ray stop`` (it kills every Ray process on the machine): a node is the
process group its ``ray start`` was started in (``start_new_session=True``) plus every descendant
of its raylet (Ray gives each worker a process group of its own), read from /proc (Linux only).

Waits poll state (process status, files, database rows) with a generous deadline; nothing sleeps
a fixed time and nothing asserts wall-clock time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
RAY = BIN / "ray"
ALORECTL = BIN / "alorectl"  # orchestrator/cli.py has no __main__: the console script is the entry point

_handed_out: set[int] = set()


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` consecutive free ports below Linux's ephemeral range (so no outgoing connection takes one)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        block = range(base, base + n)
        if not _handed_out.intersection(block) and all(_free(p) for p in block):
            _handed_out.update(block)
            return list(block)
    raise RuntimeError(f"no block of {n} free ports found")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 600, proc: subprocess.Popen | None = None,
             log: Path | None = None, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tail(log)}")
        time.sleep(interval)


def tail(log: Path | None, lines: int = 60) -> str:
    if log is None or not log.is_file():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclasses.dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str
    cmdline: tuple[str, ...]


def processes() -> dict[int, Proc]:
    """Every process on the machine, read from /proc (psutil is not a dependency of the project)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        found[int(entry.name)] = Proc(int(entry.name), int(fields[1]), int(fields[2]), fields[0],
                                      tuple(a.decode(errors="replace") for a in cmdline if a))
    return found


def descendants(pid: int, table: dict[int, Proc]) -> list[Proc]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p in table.values() if p.ppid == parent]
        out += kids
        todo += [k.pid for k in kids]
    return out


def alive(pid: int) -> bool:
    proc = processes().get(pid)
    return proc is not None and proc.state != "Z"


class Node:
    def __init__(self, name: str, temp_dir: Path, log: Path) -> None:
        self.name, self.temp_dir, self.log = name, temp_dir, log
        self.pgid: int | None = None
        self.node_id: str | None = None

    def raylet(self, table: dict[int, Proc] | None = None) -> Proc | None:
        flag = f"--temp_dir={self.temp_dir}"
        for p in (table or processes()).values():
            if p.cmdline and p.cmdline[0].endswith("/raylet") and flag in p.cmdline:
                return p
        return None

    def processes(self) -> list[Proc]:
        """Everything this node runs: its ``ray start`` process group and the raylet's descendants."""
        table = processes()
        found = {p.pid: p for p in table.values() if p.pgid == self.pgid}
        raylet = self.raylet(table)
        if raylet is not None:
            found[raylet.pid] = raylet
            found.update((p.pid, p) for p in descendants(raylet.pid, table))
        return [p for p in found.values() if p.state != "Z"]

    def owns(self, pid: int) -> bool:
        return any(p.pid == pid for p in self.processes())

    def kill(self, timeout: float = 60) -> None:
        """SIGKILL the node: its raylet, workers, agents (and, on the head, the GCS)."""
        for _ in range(3):  # a worker the raylet was forking as we looked is caught by the next round
            procs = self.processes()
            if not procs:
                return
            for p in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGKILL)
            wait_for(lambda: not any(alive(p.pid) for p in procs), f"node {self.name} to die", timeout=timeout)


class LocalCluster:
    """``ray start --head`` plus ``ray start --address`` nodes, all on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # A private token: never ~/.ray/auth_token, which other Ray instances on this machine may use.
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        self.nodes: dict[str, Node] = {}
        self.address: str | None = None

    def _ports(self) -> dict[str, Any]:
        p = free_ports(48)
        return {"node-manager-port": p[0], "object-manager-port": p[1], "dashboard-agent-listen-port": p[2],
                "dashboard-agent-grpc-port": p[3], "metrics-export-port": p[4], "runtime-env-agent-port": p[5],
                "_gcs": p[6], "_dashboard": p[7], "min-worker-port": p[8], "max-worker-port": p[47]}

    def add_node(self, name: str, head: bool = False, env: dict[str, str] | None = None) -> Node:
        assert head == (self.address is None), "the head comes first, and only once"
        temp_dir = self.root / name  # per node (Ray allows it); short, for the 107-byte socket-path limit
        temp_dir.mkdir()
        node = Node(name, temp_dir, self.root / f"{name}.log")
        ports = self._ports()
        args = [str(RAY), "start", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                f"--resources={json.dumps({name: 1})}", f"--temp-dir={temp_dir}",
                "--object-store-memory=100000000", "--disable-usage-stats",
                *(f"--{k}={v}" for k, v in ports.items() if not k.startswith("_"))]
        if head:
            args += ["--head", f"--port={ports['_gcs']}", "--include-dashboard=false",
                     f"--dashboard-port={ports['_dashboard']}"]
        else:
            args += [f"--address={self.address}"]
        with node.log.open("w") as log:
            proc = subprocess.Popen(args, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        node.pgid = proc.pid  # its session (and process group) outlives `ray start` itself
        self.nodes[name] = node
        rc = proc.wait(timeout=300)
        if rc != 0:
            raise RuntimeError(f"ray start for {name} failed ({rc}):\n{tail(node.log)}")
        if head:
            self.address = f"127.0.0.1:{ports['_gcs']}"
        return node

    def alive_nodes(self) -> dict[str, str]:
        """{custom resource name: node id} of the nodes the GCS holds alive (asked from a separate driver)."""
        probe = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                 "print(json.dumps({r: n['NodeID'] for n in ray.nodes() if n['Alive'] "
                 "for r in n['Resources'] if r in %r}))" % (self.address, sorted(self.nodes)))
        out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                             timeout=300, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"probing the cluster failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, names: set[str], timeout: float = 300) -> dict[str, str]:
        ids = wait_for(lambda: (lambda a: a if set(a) == names else None)(self.alive_nodes()),
                       f"nodes {sorted(names)} alive", timeout=timeout, interval=1)
        for name, node_id in ids.items():
            self.nodes[name].node_id = node_id
        return ids

    def shutdown(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.kill()


class Driver:
    """``alorectl ...`` in its own process (and process group), output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            self.proc = subprocess.Popen([str(ALORECTL), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait(self, timeout: float = 900) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"alorectl did not finish in {timeout:.0f}s\n{tail(self.log)}") from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


# --- reading what a sweep left behind -----------------------------------------------------------------


def query(db: Path, sql: str, *params: Any) -> list[tuple]:
    """Rows from the leaderboard database, read-only; [] while it does not exist yet or is busy."""
    if not db.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # the driver is creating the schema, or holds the write lock
        return []


def results(trial_dir: Path) -> list[dict[str, Any]]:
    """Tune's per-report history of one trial (result.json: one JSON object a line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            rows.append(json.loads(line))
    return rows


def trial_dirs(experiment: Path, pattern: str = "*__*") -> list[Path]:
    """The trial folders of a sweep's Tune experiment (``<backbone>__<task>__<method>__<trial>``)."""
    return sorted(p for p in experiment.glob(pattern) if p.is_dir()) if experiment.is_dir() else []


def checkpoint_known(experiment: Path, trial_id: str) -> bool:
    """Whether Tune's newest experiment state in storage (what ``Tuner.restore`` reads) holds a checkpoint
    of the trial: only then can a restored experiment continue that trial instead of starting it again."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return False
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being written
        return False
    return any(f'"trial_id": "{trial_id}"' in entry[0] and "checkpoint_" in "".join(entry[1:])
               for entry in data.get("trial_data", []))
