"""``alorectl bench scale``: the real sweep machinery on a simulated multi-node cluster, measured.

    bench ──ray start × K──> K local Ray nodes, N logical GPU slots in all (``--num-gpus`` per node)
          ──alorectl sweep run (own process group, ALORE_SIMULATE=<table>)──> plan, searcher, Tune with the
            preset's scheduler, recorder (database), tracker (MLflow), leaderboard, resume
          ──polls the database──> when each trial is complete (row ended + MLflow run complete)
          ──(--kill-driver-at F) SIGKILL the driver's process group, ``alorectl sweep resume``
          ──(--kill-node-at F) SIGKILL one worker node: its trials continue elsewhere from checkpoints
          ──checks──> every planned trial once in the database and in MLflow, every cell on the leaderboard

Only the trial body is simulated (:mod:`alorectl.bench.simulated`): a ViT-B trial takes ``--trial-seconds``
for its epochs, other backbones scale by the plan's cost model, checkpoints have the real size. The sweep
is recorded as simulated and kept apart from real results.

Measures: makespan (first epoch start → last trial complete in the database and MLflow; ``sweep_done_s`` is
until the driver exited, every cell's result logged), the plan's own
estimate for these slots (``ideal_makespan_s``), occupancy (Σ busy epoch time of distinct epochs / (slots ×
makespan)), results/s, lag (a trial's last epoch → its row and MLflow run complete; the database is polled
every :data:`POLL_S`), the driver's CPU time and peak RSS (``wait4`` of its process), the size of Tune's
experiment state, and the time of ``sweep status`` and ``leaderboard`` at the end. With a kill: ``restore_s``
(the kill → the first interrupted trial trains again) and ``lost_trial_s`` (epochs that ran twice).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from alore.errors import AloreError

from alorectl import defaults, security
from alorectl.sweep import plan as planning
from alorectl.sweep.preset import Preset
from . import simulated

POLL_S = 0.5                     # how often the database is read for completed trials
PROGRESS_S = 30.0                # how often a progress line is printed (not with --json)
BIN = Path(sys.executable).parent
RAY = [sys.executable, "-m", "ray.scripts.scripts"]  # `ray`, run by this interpreter (workers import this alorectl)
ALORECTL = BIN / "alorectl"
STATE_BYTES_PER_PARAM = 12       # float32 parameter + AdamW's two moments
NUM_CLASSES = 100                # the head in the checkpoint size (VTAB's largest tasks have 100-397 classes)


@dataclasses.dataclass
class Options:
    slots: int
    nodes: int = 1
    trial_seconds: float = 2.0
    epochs: int | None = None
    kill_driver_at: float | None = None
    kill_node_at: float | None = None
    name: str = "scale"
    command_times: bool = True  # also time `sweep status` / `leaderboard` as whole commands (fresh processes)


# ---- the simulation table: costs and sizes the driver computes (torch, meta device), trials read ------------

def sizes(backbones: list[str], methods: list[str]) -> dict[str, dict[str, int]]:
    """Per backbone/method: the paper's trainable count, checkpoint bytes (trainable incl. head + AdamW
    moments, float32) and adapter file bytes, from alore's models on the meta device (nothing allocated)."""
    from alore.api import apply, count_trainable
    from alore.backbones import create_backbone

    out = {}
    for b in backbones:
        for m in methods:
            model = apply(create_backbone(b, NUM_CLASSES, device="meta"), m)
            every = sum(p.numel() for p in model.parameters() if p.requires_grad)
            out[f"{b}/{m}"] = {"trainable": int(count_trainable(model)),
                               "state_bytes": int(STATE_BYTES_PER_PARAM * every), "adapter_bytes": int(4 * every)}
    return out


def write_table(path: Path, plan: planning.SweepPlan, preset: Preset, trial_seconds: float, ledger: Path) -> None:
    table = {"kind": "alore-simulation", "trial_seconds": trial_seconds, "ledger": str(ledger),
             "cost": {cp.cell.backbone: cp.cost for cp in plan.cells},
             "sizes": sizes(list(preset.backbones), list(preset.methods))}
    path.write_text(json.dumps(table, indent=1))


def preset_yaml(p: Preset) -> dict[str, Any]:
    """The preset in the file layout ``alorectl sweep run`` reads."""
    out: dict[str, Any] = {
        "suite": p.suite, "data_root": p.data_root, "backbones": list(p.backbones), "tasks": list(p.tasks),
        "methods": list(p.methods), "weights": dict(p.weights),
        "search": {"algorithm": p.algorithm, "trials": p.trials, "scheduler": p.scheduler},
        "space": dict(p.space), "method_space": dict(p.method_space),
        "train": {"epochs": p.epochs, "batch_size": p.batch_size}, "final": {"seeds": list(p.seeds)},
        "resources": {"cpus_per_trial": p.cpus_per_trial, "gpus_per_trial": p.gpus_per_trial}}
    if p.warmup_explicit:
        out["train"]["warmup_epochs"] = p.warmup_epochs
    if p.max_concurrent is not None:
        out["resources"]["max_concurrent"] = p.max_concurrent
    return out


# ---- the simulated cluster: `ray start` processes on 127.0.0.1 -----------------------------------------------

def _free_ports(n: int, taken: set[int]) -> list[int]:
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        block = range(base, base + n)
        if taken.intersection(block):
            continue
        ok = True
        for port in block:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            taken.update(block)
            return list(block)
    raise AloreError(f"no block of {n} free ports found for the simulated cluster")


def _processes() -> dict[int, tuple[int, int, str, tuple[str, ...]]]:
    """pid -> (ppid, pgid, state, cmdline), from /proc (Linux)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0],
                                  tuple(a.decode(errors="replace") for a in cmdline if a))
    return found


class Node:
    def __init__(self, name: str, temp_dir: Path, pgid: int) -> None:
        self.name, self.temp_dir, self.pgid = name, temp_dir, pgid

    def pids(self) -> set[int]:
        """Its ``ray start`` process group and everything below its raylet (workers have groups of their own)."""
        table = _processes()
        mine = {pid for pid, (_, pgid, state, _) in table.items() if pgid == self.pgid and state != "Z"}
        flag = f"--temp_dir={self.temp_dir}"
        todo = [pid for pid, (_, _, _, cmd) in table.items() if cmd and cmd[0].endswith("/raylet") and flag in cmd]
        while todo:
            parent = todo.pop()
            mine.add(parent)
            todo += [pid for pid, (ppid, _, state, _) in table.items() if ppid == parent and state != "Z"]
        return mine

    def kill(self) -> None:
        for _ in range(5):  # a worker being forked as we looked is caught by the next round
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)


class Cluster:
    """K ``ray start`` nodes on 127.0.0.1, each offering ``gpus`` logical GPUs (no GPU is touched)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # A private token (never ~/.ray/auth_token): the driver presents the same one.
        # No idle workers started ahead on each node (Ray starts one per CPU when a driver connects): K nodes on
        # one machine would hold K x CPUs idle Python processes that a real node's memory absorbs and ours cannot.
        self.env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "RAY_prestart_worker_first_driver": "0"}
        self.nodes: list[Node] = []
        self.address: str | None = None
        self._taken: set[int] = set()

    def add_node(self, gpus: int, cpus: float) -> Node:
        head = self.address is None
        name = f"n{len(self.nodes)}"
        temp_dir = self.root / name  # short: Ray's socket paths have a 107-byte limit
        temp_dir.mkdir(mode=0o700)
        p = _free_ports(12 + max(4, gpus * 2), self._taken)
        args = [*RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus:g}", f"--num-gpus={gpus}",
                f"--resources={json.dumps({f'sim_{name}': 1})}", f"--temp-dir={temp_dir}",
                "--object-store-memory=80000000", "--disable-usage-stats", f"--node-manager-port={p[0]}",
                f"--object-manager-port={p[1]}", f"--dashboard-agent-listen-port={p[2]}",
                f"--dashboard-agent-grpc-port={p[3]}", f"--metrics-export-port={p[4]}",
                f"--runtime-env-agent-port={p[5]}", f"--min-worker-port={p[8]}", f"--max-worker-port={p[-1]}"]
        env = dict(self.env)
        if head:
            args += ["--head", f"--port={p[6]}", "--include-dashboard=false", f"--dashboard-port={p[7]}"]
            # A dead node is declared dead after a few missed health checks, not Ray's default ~30 s.
            env.update(RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                       RAY_health_check_failure_threshold="5")
        else:
            args += [f"--address={self.address}"]
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        node = Node(name, temp_dir, proc.pid)
        self.nodes.append(node)
        if proc.wait(timeout=300) != 0:
            raise AloreError(f"ray start for simulated node {name} failed; see {log}")
        if head:
            self.address = f"127.0.0.1:{p[6]}"
        return node

    def wait_alive(self, count: int, timeout: float = 300) -> None:
        probe = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                 "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        deadline = time.monotonic() + timeout
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                                 timeout=timeout, cwd=self.root)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            if time.monotonic() > deadline:
                raise AloreError(f"the simulated cluster did not reach {count} nodes: {out.stderr[-500:]}")
            time.sleep(1)

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            node.kill()


# ---- watching the sweep ------------------------------------------------------------------------------------

def _query(db_file: Path, sql: str, *params: Any) -> list[tuple]:
    if not db_file.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db_file}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []


COMPLETE_SQL = ("SELECT c.backbone, c.task, c.method, t.trial_key FROM trial t JOIN cell c ON c.id = t.cell_id "
                "JOIN sweep s ON s.id = c.sweep_id WHERE s.name = ? AND t.status IN ('done', 'pruned', 'failed') "
                "AND t.mlflow_run_id IS NOT NULL")


DRIVERS: list[Driver] = []  # every driver this process started


class Driver:
    """One ``alorectl sweep run|resume`` process in its own process group; its rusage when it ends."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("a") as out:
            self.proc = subprocess.Popen([str(ALORECTL), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        DRIVERS.append(self)
        self.rusage: Any = None
        self.rc: int | None = None

    def poll(self) -> int | None:
        if self.rc is None:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.rc, self.rusage = os.waitstatus_to_exitcode(status), usage
                self.proc.returncode = self.rc
        return self.rc

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        while self.poll() is None:
            time.sleep(0.05)


def run_bench(preset: Preset, opts: Options, workdir: Path, on_step: Callable[[str], None] = lambda m: None,
              ) -> dict[str, Any]:
    """Run the simulated sweep and return the measurements (see the module docstring)."""
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise AloreError(f"--workdir {workdir} is not empty; name a new or empty folder")
    security.make_private(workdir)
    data = workdir / "sim-data" / preset.suite  # a data root that exists; simulated trials read nothing
    data.mkdir(parents=True)
    changes: dict[str, Any] = {"data_root": str(data), "weights": {b: "random" for b in preset.backbones},
                               "gpus_per_trial": 1.0}
    if opts.epochs:
        changes["epochs"] = opts.epochs
    preset = dataclasses.replace(preset, **changes)
    on_step("planning (the cost model counts FLOPs on the meta device)")
    plan = planning.build(preset, opts.name, data, preset.weights)
    ledger = workdir / "sim-ledger"
    ledger.mkdir(mode=0o700)
    table = workdir / "simulation.json"
    write_table(table, plan, preset, opts.trial_seconds, ledger)
    preset_file = workdir / f"{opts.name}.yaml"
    preset_file.write_text(yaml.safe_dump(preset_yaml(preset), sort_keys=False))
    ideal = planning.estimate_makespan(plan, opts.slots) * opts.trial_seconds

    root = Path(os.environ.get("ALORE_BENCH_RAY_ROOT", "/tmp")) / f"alore-scale-{secrets.token_hex(3)}"
    root.mkdir(mode=0o700)
    cluster = Cluster(root)
    per_node = [opts.slots // opts.nodes + (1 if i < opts.slots % opts.nodes else 0) for i in range(opts.nodes)]
    try:
        on_step(f"starting {opts.nodes} simulated node(s) with {opts.slots} GPU slots")
        for gpus in per_node:
            cluster.add_node(gpus, gpus * preset.cpus_per_trial)
        cluster.wait_alive(opts.nodes)
        result = _sweep(plan, preset_file, table, workdir, cluster, opts, on_step)
    finally:
        for driver in DRIVERS:  # stopped (Ctrl-C, an error) before its sweep ended: no driver outlives the bench
            if driver.poll() is None:
                driver.kill()
        on_step("stopping the simulated cluster")
        cluster.shutdown()
    shutil.rmtree(root, ignore_errors=True)  # the nodes' session folders (logs, sockets): kept when it failed
    result.update(slots=opts.slots, nodes=opts.nodes, cells=len(plan.cells), planned_trials=plan.total_trials,
                  trial_seconds=opts.trial_seconds, epochs=preset.epochs, ideal_makespan_s=ideal,
                  makespan_ratio=result["makespan_s"] / ideal if ideal else None,
                  occupancy=result["busy_s"] / (opts.slots * result["makespan_s"]) if result["makespan_s"] else None,
                  workdir=str(workdir), merged_weights="stand-in (8-byte safetensors): simulated runs merge nothing",
                  # What one core of the driver spent per trial and per report (Tune's loop, the database, MLflow):
                  # the rate one driver could sustain, whatever this machine's other processes cost.
                  driver_cpu_ms_per_trial=1000 * result["driver_cpu_s"] / max(1, result["trials"]),
                  driver_cpu_ms_per_result=1000 * result["driver_cpu_s"] / max(1, result["reports"]),
                  driver_cpu_share=result["driver_cpu_s"] / result["makespan_s"] if result["makespan_s"] else None,
                  # The simulated cluster's raylets and workers share this machine's cores with the driver.
                  machine_cpus=os.cpu_count(), load_avg_1m=round(os.getloadavg()[0], 2))
    result.update(_verify(plan, workdir, opts.name))
    result.update(_final_reads(preset, workdir, opts.name, cluster.env, opts.command_times))
    return result


def _sweep(plan: planning.SweepPlan, preset_file: Path, table: Path, workdir: Path, cluster: Cluster, opts: Options,
           on_step: Callable[[str], None]) -> dict[str, Any]:
    env = {**cluster.env, simulated.ENV: str(table)}
    log = workdir / "driver.log"
    common = ["--workdir", str(workdir), "--address", str(cluster.address)]
    db_file = Path(defaults.db_url(workdir).removeprefix("sqlite:///"))
    total = plan.total_trials
    seen: dict[tuple, float] = {}
    drivers = [Driver(["sweep", "run", str(preset_file), "--name", opts.name, *common], env, log)]
    on_step(f"running {total} simulated trials of {len(plan.cells)} cells")
    killed_driver_at = killed_node_at = None
    began = shown = time.time()
    while True:
        now = time.time()
        for row in _query(db_file, COMPLETE_SQL, opts.name):
            seen.setdefault(row, now)
        if now - shown >= PROGRESS_S:  # a long run says how it goes (and leaves numbers if it is stopped)
            shown = now
            on_step(f"{now - began:.0f} s: {len(seen)}/{total} trials complete ({len(seen) / (now - began):.2f}/s), "
                    f"driver peak RSS {_peak_rss_mb(drivers[-1].proc.pid):.0f} MB")
        if opts.kill_driver_at is not None and killed_driver_at is None and len(seen) >= opts.kill_driver_at * total:
            on_step(f"SIGKILL the driver's process group ({len(seen)} of {total} trials complete)")
            killed_driver_at = time.time()  # the SIGKILL, not when the process is reaped
            drivers[-1].kill()
            drivers.append(Driver(["sweep", "resume", opts.name, *common], env, log))
            on_step("resuming: alorectl sweep resume")
            continue
        if opts.kill_node_at is not None and killed_node_at is None and len(seen) >= opts.kill_node_at * total \
                and len(cluster.nodes) > 1:
            on_step(f"SIGKILL simulated node {cluster.nodes[-1].name} ({len(seen)} of {total} trials complete)")
            killed_node_at = time.time()  # the first SIGKILL (kill() repeats until none of its processes is left)
            cluster.nodes[-1].kill()
        rc = drivers[-1].poll()
        if rc is not None:
            exited = time.time()
            break
        time.sleep(POLL_S)
    for row in _query(db_file, COMPLETE_SQL, opts.name):
        seen.setdefault(row, time.time())
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise AloreError(f"the simulated sweep's driver exited with {rc}; see {log}:\n{tail}")
    epochs = _ledger(workdir / "sim-ledger")
    first_start = min(e["start"] for rows in epochs.values() for e in rows)
    last_end = {trial: max(e["end"] for e in rows) for trial, rows in epochs.items()}
    lags = [seen[key] - last_end[_dirname(key)] for key in seen if _dirname(key) in last_end]
    distinct: dict[tuple[str, int], float] = {}
    redone = 0.0
    for trial, rows in epochs.items():
        for e in rows:
            k = (trial, e["epoch"])
            if k in distinct:
                redone += e["end"] - e["start"]
            distinct[k] = e["end"] - e["start"]
    if not seen:
        raise AloreError(f"no trial of the simulated sweep was recorded complete; see {log}")
    makespan = max(seen.values()) - first_start
    exp = workdir / "ray" / opts.name
    reports = sum(len((d / "result.json").read_text().splitlines()) for d in exp.iterdir()
                  if (d / "result.json").is_file()) if exp.is_dir() else 0
    out: dict[str, Any] = {
        "trials": len(seen), "makespan_s": makespan, "busy_s": sum(distinct.values()),
        "results_per_s": reports / makespan if makespan else None, "reports": reports,
        "epochs_per_s": len(distinct) / makespan if makespan else None,
        "lag_s_median": statistics.median(lags) if lags else None, "lag_s_max": max(lags) if lags else None,
        "lag_resolution_s": POLL_S,
        # Until the driver exited: every cell's result, pictures and model logged, the leaderboard published.
        "sweep_done_s": exited - first_start,
        "driver_cpu_s": sum(d.rusage.ru_utime + d.rusage.ru_stime for d in drivers if d.rusage),
        "driver_peak_rss_mb": max(d.rusage.ru_maxrss for d in drivers if d.rusage) / 1024,
        "experiment_state_mb": sum(f.stat().st_size for f in exp.glob("*") if f.is_file()) / 1e6 if exp.is_dir()
        else 0.0, **_concurrency(epochs)}
    if killed_driver_at is not None or killed_node_at is not None:
        after = killed_driver_at or killed_node_at
        resumed = _resumed(epochs, after)
        out["restore_s"] = (min(resumed) - after) if resumed else None
        out["lost_trial_s"] = redone
        out["lost_trial_s_per_slot"] = redone / opts.slots
        out["killed"] = "driver" if killed_driver_at is not None else "node"
    return out


def _resumed(epochs: dict[str, list[dict[str, Any]]], after: float) -> list[float]:
    """When each trial interrupted by a kill at ``after`` trained again: the first epoch of each later attempt
    (trial body run) that began after the kill. Not any epoch after the kill: an actor of a killed driver may
    still start one before Ray stops it, and the other nodes' trials go on through a node's kill."""
    out = []
    for rows in epochs.values():
        began: dict[str, float] = {}
        for e in rows:
            began[e["attempt"]] = min(began.get(e["attempt"], e["start"]), e["start"])
        out += [t for t in sorted(began.values())[1:] if t > after]
    return out


def _concurrency(epochs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """How many trials trained at once (each run of a trial from its first epoch's start to its last epoch's
    end): the time-weighted median and the peak, and how many worker processes ran trials at all. With
    ``slots`` slots both should approach ``slots``: fewer means the slots waited (for the driver, or for
    Ray to start the trials' actors)."""
    spans: dict[str, tuple[float, float]] = {}
    for rows in epochs.values():
        for e in rows:
            start, end = spans.get(e["attempt"], (e["start"], e["end"]))
            spans[e["attempt"]] = (min(start, e["start"]), max(end, e["end"]))
    if not spans:
        return {"concurrent_trials_median": 0, "concurrent_trials_max": 0, "trial_processes": 0}
    events = sorted([(s, 1) for s, _ in spans.values()] + [(t, -1) for _, t in spans.values()])
    level, peak, last, held = 0, 0, events[0][0], Counter()
    for t, step in events:
        held[level] += t - last
        level, last = level + step, t
        peak = max(peak, level)
    half, acc, median = sum(held.values()) / 2, 0.0, 0
    for median in sorted(held):
        acc += held[median]
        if acc >= half:
            break
    return {"concurrent_trials_median": median, "concurrent_trials_max": peak,
            "trial_processes": len({attempt.split("-")[0] for attempt in spans})}


def _peak_rss_mb(pid: int) -> float:
    """A live process's peak resident set (VmHWM), in MB; 0 when gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _dirname(key: tuple) -> str:
    backbone, task, method, trial_key = key
    return f"{backbone}__{task}__{method}__{trial_key}"


def _ledger(folder: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in folder.glob("*.jsonl"):
        rows = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
        out[path.stem] = rows
    return out


def planned_keys(plan: planning.SweepPlan) -> set[tuple[str, str, str, str]]:
    keys = set()
    for cp in plan.cells:
        c = cp.cell
        keys |= {(c.backbone, c.task, c.method, f"search-{i:02d}") for i in range(cp.n_search)}
        keys |= {(c.backbone, c.task, c.method, f"final-s{s}") for s in cp.seeds}
    return keys


def _verify(plan: planning.SweepPlan, workdir: Path, name: str) -> dict[str, Any]:
    """Every planned trial exactly once in the database and with one complete MLflow run; every cell on the
    leaderboard; the sweep marked simulated."""
    from mlflow import MlflowClient

    from alorectl import db
    from alorectl.results.leaderboard import build
    from alorectl.tracking.client import COMPLETE
    from alorectl.tracking.observer import experiment_name

    planned = planned_keys(plan)
    engine = db.open_existing(defaults.db_url(workdir, None))
    try:
        rows = db.sweep_trials(engine, name)
        keyed = Counter((r.backbone, r.task, r.method, r.trial_key) for r in rows)
        ended = {(r.backbone, r.task, r.method, r.trial_key) for r in rows if r.status in ("done", "pruned")}
        status = db.sweep_status(engine, name)
        config = db.sweep_config(engine, name)
        on_board = 0
        for b in sorted({cp.cell.backbone for cp in plan.cells}):
            board = build(engine, b, plan.cells[0].run.suite, simulated=True)
            on_board += sum(1 for r in board.rows for t in board.tasks if r.tasks.get(t) is not None)
        real_board = sum(len(build(engine, b, plan.cells[0].run.suite).rows)
                         for b in sorted({cp.cell.backbone for cp in plan.cells}))
    finally:
        engine.dispose()
    client = MlflowClient(defaults.tracking_uri(workdir, None))
    exp = client.get_experiment_by_name(experiment_name(name))
    runs, token = [], None
    while exp is not None:
        page = client.search_runs([exp.experiment_id], filter_string="tags.protocol != ''", max_results=5000,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            break
    mlflow_keys = Counter(r.data.tags.get("alore.key") for r in runs)
    complete = {r.data.tags.get("alore.key") for r in runs if r.data.tags.get(COMPLETE) == "1"}
    simulated_runs = sum(1 for r in runs if r.data.tags.get("alore.simulated") == "1")
    want = {f"{b}__{t}__{m}/{k}" for b, t, m, k in planned}
    return {
        "db_trials": len(rows), "db_missing": len(planned - set(keyed)), "db_extra": len(set(keyed) - planned),
        "db_duplicates": sum(1 for v in keyed.values() if v > 1), "db_not_ended": len(planned) - len(ended & planned),
        "mlflow_runs": len(runs), "mlflow_missing": len(want - complete),
        "mlflow_duplicates": sum(1 for v in mlflow_keys.values() if v > 1),
        "mlflow_simulated_tag": simulated_runs,
        "cells_done": status.counts.get("done", 0), "cells_on_leaderboard": on_board,
        "real_leaderboard_rows": real_board, "sweep_marked_simulated": bool(config.get("simulated")),
    }


def _final_reads(preset: Preset, workdir: Path, name: str, env: dict[str, str], commands: bool = True,
                 ) -> dict[str, Any]:
    """The time of ``sweep status`` and ``leaderboard`` (the slower backbone) at the end: ``status_s`` and
    ``leaderboard_s`` are what the commands do once started (the same calls, in this process);
    ``*_cmd_s`` are the whole commands as a user runs them (interpreter start and imports included)."""
    from alorectl import db
    from alorectl.results.leaderboard import build, check_choices
    from alorectl.sweep.timing import timing

    def timed(args: list[str]) -> float:
        t = time.perf_counter()
        out = subprocess.run([str(ALORECTL), *args], env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise AloreError(f"alorectl {' '.join(args)} failed: {out.stderr[-500:]}")
        return time.perf_counter() - t

    engine = db.open_existing(defaults.db_url(workdir))
    try:
        t = time.perf_counter()
        status, config, trials = db.sweep_status(engine, name), db.sweep_config(engine, name), db.sweep_trials(engine, name)
        json.dumps({**status.to_dict(), "timing": timing(trials, int(config.get("slots") or 1),
                                                         int(config.get("total_trials") or 0)).to_dict()}, default=str)
        status_s = time.perf_counter() - t
        board_s = 0.0
        for b in preset.backbones:
            t = time.perf_counter()
            check_choices(engine, b, preset.suite, simulated=True)
            db.to_json(build(engine, b, preset.suite, simulated=True))
            board_s = max(board_s, time.perf_counter() - t)
    finally:
        engine.dispose()
    if not commands:
        return {"status_s": status_s, "leaderboard_s": board_s}
    status_cmd_s = timed(["sweep", "status", name, "--workdir", str(workdir), "--json"])
    board_cmd_s = max(timed(["leaderboard", "--backbone", b, "--suite", preset.suite, "--simulated", "--workdir",
                             str(workdir), "--format", "json"]) for b in preset.backbones)
    return {"status_s": status_s, "leaderboard_s": board_s, "status_cmd_s": status_cmd_s,
            "leaderboard_cmd_s": board_cmd_s}
