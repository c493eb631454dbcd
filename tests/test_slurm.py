"""Issue 21: docker/slurm/sweep.sbatch, the Slurm job script, without a Slurm cluster.

The script's cluster logic lives in shell functions that run without Slurm (``ALORE_LAUNCHER=local``
starts each "node" here instead of through ``srun``):

- the script parses (``bash -n``) and passes shellcheck (Debian's package; under CI a missing
  shellcheck fails the test, locally it skips);
- the ``ray start`` arguments for a Slurm node: resources from Slurm's variables, the job's own port
  block, every flag one that the installed ``ray start`` knows, head-only flags on the head only;
- the batch host is the head; a password among the arguments, or a settings file others can read,
  is refused before anything starts; waiting for nodes ends with a clear message (timeout, node died);
- (cluster) the whole script on localhost: a two-node Ray started by the script's own functions and
  a tiny sweep run across both nodes, the Ray nodes without the credentials, everything stopped after.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from presets import tiny_sweep
from cluster_utils import BIN, Node, free_ports, processes, query, tail, wait_for

SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "slurm" / "sweep.sbatch"
SECRET = "s3cret-canary-7f3a"  # a password the Ray nodes must never see


def base_env(**extra: str) -> dict[str, str]:
    """The test's environment without Ray's, alore's or Slurm's variables; the venv's tools first."""
    drop = ("RAY_", "SLURM", "ALORE_", "MLFLOW_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return {**env, **extra}


def bash(snippet: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``snippet`` in bash after sourcing the script (its functions, not its main)."""
    return subprocess.run(["bash", "-c", f"source {shlex.quote(str(SCRIPT))}\n{snippet}"], env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- the file itself ---------------------------------------------------------------------------------


def test_script_parses() -> None:
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        message = "shellcheck is not installed (Debian: apt-get install -y shellcheck)"
        if os.environ.get("CI"):
            pytest.fail(f"the shellcheck test cannot be skipped under CI: {message}", pytrace=False)
        pytest.skip(message)
    out = subprocess.run([shellcheck, "--shell=bash", "--severity=style", str(SCRIPT)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_sbatch_header() -> None:
    """One Ray node per Slurm node: one task a node, GPUs per node, and the options before any command."""
    lines = SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    header = [ln for ln in lines[:first_command] if ln.startswith("#SBATCH")]
    options = dict(ln.split()[1].lstrip("-").split("=", 1) for ln in header)
    assert options["ntasks-per-node"] == "1" and "nodes" in options and "gpus-per-node" in options
    assert not [ln for ln in lines[first_command:] if ln.startswith("#SBATCH")], "sbatch ignores these"


# --- the cluster logic, as functions -----------------------------------------------------------------


def ray_args(role: str, index: int, **env: str) -> list[str]:
    out = bash(f'ALORE_RAY_TMPDIR=/tmp/alore-ray-1234; alore_ray_args {role} {index} 10.0.0.1 "$(alore_port_base 123456)"',
               base_env(**env))
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_ray_arguments_for_a_slurm_node() -> None:
    from ray.scripts.scripts import start

    slurm = {"SLURM_JOB_ID": "123456", "SLURM_GPUS_PER_NODE": "a100:4", "SLURM_CPUS_PER_TASK": "32"}
    head, worker = ray_args("head", 0, **slurm), ray_args("worker", 3, **slurm)
    for args in (head, worker):
        assert args[:2] == ["start", "--block"]
        assert "--num-gpus=4" in args and "--num-cpus=32" in args  # what Slurm gave the node
        flags = {opt for p in start.params for opt in p.opts}
        assert all(a.split("=")[0] in flags for a in args[1:]), [a for a in args[1:] if a.split("=")[0] not in flags]
        ports = [int(a.split("=")[1]) for a in args if a.split("=")[0].endswith("-port")]
        base = 10000 + (123456 % 22) * 1000  # the job's block: another job on the node takes another one
        assert ports and all(base <= p < base + 1000 for p in ports), ports
        assert len(ports) == len(set(ports))
    assert "--head" in head and "--node-ip-address=10.0.0.1" in head and f"--port={base}" in head
    assert "--dashboard-host=127.0.0.1" in head  # the dashboard stays on the head: ssh -L
    assert f"--address=10.0.0.1:{base}" in worker
    # Ray refuses head-only flags on a worker; on Slurm a worker finds its own address.
    assert not [a for a in worker if a.split("=")[0] in ("--head", "--port", "--include-dashboard",
                                                          "--node-ip-address", "--dashboard-host")]
    # Every node of a Slurm job uses the same ports (they are different machines).
    node_ports = sorted(a for a in worker if a.startswith(("--node-manager-port", "--object-manager-port")))
    assert node_ports == sorted(a for a in head if a.startswith(("--node-manager-port", "--object-manager-port")))


def test_resources_and_ports_can_be_set() -> None:
    args = ray_args("worker", 1, SLURM_JOB_ID="7", SLURM_GPUS_PER_NODE="8", ALORE_GPUS_PER_NODE="2",
                    ALORE_CPUS_PER_NODE="6", ALORE_RAY_PORT_BASE="40000", ALORE_RAY_PORT_STRIDE="1000",
                    ALORE_RAY_START_ARGS="--object-store-memory=1000000000")
    assert "--num-gpus=2" in args and "--num-cpus=6" in args and "--object-store-memory=1000000000" in args
    assert "--node-manager-port=41003" in args and "--address=10.0.0.1:40000" in args  # node 1's own block
    out = bash("alore_gpus_per_node", base_env(ALORE_GPUS_PER_NODE="two"))
    assert out.returncode != 0 and "ALORE_GPUS_PER_NODE must be a whole number, got 'two'" in out.stderr


def test_the_batch_host_is_the_head(tmp_path: Path) -> None:
    """The head runs where the driver runs: the node that executes the batch script, listed first."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text("#!/bin/sh\nprintf 'gpu01\\ngpu02\\ngpu03\\n'\n")
    (fake / "scontrol").chmod(0o755)
    env = base_env(SLURM_JOB_NODELIST="gpu[01-03]", SLURMD_NODENAME="gpu02")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    out = bash("alore_nodes", env)
    assert out.stdout.split() == ["gpu02", "gpu01", "gpu03"], out.stderr
    out = bash("alore_nodes", base_env(ALORE_NODES="a b"))
    assert out.stdout.split() == ["a", "b"]


def run_script(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_password_in_the_arguments_is_refused(tmp_path: Path) -> None:
    """sbatch stores the arguments with the job (`scontrol show job` shows them): refuse, start nothing."""
    env = base_env(HOME=str(tmp_path), ALORE_LAUNCHER="local", ALORE_NODES="n0",
                   ALORE_WORKDIR=str(tmp_path / "work"))
    out = run_script(["vtab", "--db", f"postgresql+psycopg://alore:{SECRET}@db:5432/alore"], env)
    assert out.returncode != 0
    assert "a password in the arguments" in out.stderr and "ALORE_DB" in out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert not (tmp_path / "work").exists(), "nothing may start"


def test_the_settings_file_must_be_private(tmp_path: Path) -> None:
    settings = tmp_path / "slurm.env"
    settings.write_text(f"ALORE_WORKDIR=relative/work\nALORE_DB=postgresql+psycopg://a:{SECRET}@db/a\n")
    env = base_env(ALORE_ENV_FILE=str(settings), ALORE_LAUNCHER="local", ALORE_NODES="n0")
    settings.chmod(0o644)
    out = run_script(["demo"], env)
    assert out.returncode != 0 and f"chmod 600 {settings}" in out.stderr
    settings.chmod(0o600)
    out = run_script(["demo"], env)  # read now: its ALORE_WORKDIR is checked next
    assert out.returncode != 0 and "ALORE_WORKDIR must be an absolute path, got 'relative/work'" in out.stderr
    assert SECRET not in out.stdout + out.stderr
    out = run_script(["demo"], base_env(ALORE_ENV_FILE=str(tmp_path / "missing.env")))
    assert out.returncode != 0 and "does not exist" in out.stderr


def test_waiting_for_nodes_ends_with_a_clear_message() -> None:
    """No head ever answers: a timeout naming what is missing; a node process that died: at once."""
    port = free_ports(1)[0]
    started = time.monotonic()
    out = bash(f"alore_wait_nodes 127.0.0.1:{port} 2 3", base_env())
    assert out.returncode == 1
    assert f"0 of 2 Ray nodes joined within 3s at 127.0.0.1:{port}" in out.stderr
    assert "ALORE_NODE_TIMEOUT" in out.stderr
    out = bash(f"true & pid=$!; wait $pid; alore_wait_nodes 127.0.0.1:{port} 1 300 $pid", base_env())
    assert out.returncode == 1 and "1 Ray node(s) exited before joining" in out.stderr
    assert time.monotonic() - started < 120  # the dead node is noticed, not waited out


# --- the whole script on localhost -------------------------------------------------------------------

# Two search trials at once on two one-CPU nodes: one on each.
PRESET = tiny_sweep(train={"epochs": 1})


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


@pytest.mark.cluster
@pytest.mark.skipif(sys.platform != "linux", reason="reads processes from /proc")
def test_the_script_starts_two_ray_nodes_and_runs_a_sweep_across_both(demo_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    work.chmod(0o700)
    for item in demo_dir.iterdir():
        (work / "data" / item.name).symlink_to(item)
    preset = tmp_path / "tiny.yaml"
    preset.write_text(yaml.safe_dump(PRESET))
    settings = tmp_path / "slurm.env"  # as a user would keep it: owner-only, the password inside
    settings.write_text(f"ALORE_WORKDIR={work}\nMLFLOW_TRACKING_PASSWORD={SECRET}\n")
    settings.chmod(0o600)
    ray_tmp = Path(tempfile.mkdtemp(prefix="alore-sl-", dir="/tmp"))  # short: Ray's socket paths
    log = tmp_path / "job.log"
    env = base_env(ALORE_ENV_FILE=str(settings), ALORE_LAUNCHER="local", ALORE_NODES="n0 n1",
                   ALORE_HEAD_IP="127.0.0.1", ALORE_RAY_PORT_BASE=str(free_ports(2000)[0]),
                   ALORE_RAY_PORT_STRIDE="1000", ALORE_CPUS_PER_NODE="1", ALORE_GPUS_PER_NODE="0",
                   ALORE_RAY_TMPDIR=str(ray_tmp), ALORE_NODE_TIMEOUT="300",
                   ALORE_RAY_START_ARGS="--object-store-memory=100000000", PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        job = subprocess.Popen(["bash", str(SCRIPT), str(preset), "--name", "slurmtiny"], env=env, stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    nodes = [Node(name, ray_tmp / name, log) for name in ("n0", "n1")]
    for node in nodes:
        node.pgid = job.pid  # local "nodes" run in the script's process group
    try:
        # While the sweep runs: both raylets are up, with the token but without the password.
        raylets = wait_for(lambda: [r for r in (n.raylet() for n in nodes) if r] if all(n.raylet() for n in nodes)
                           else None, "both Ray nodes", timeout=300, proc=job, log=log, interval=0.5)
        for raylet in raylets:
            env_of = environ(raylet.pid)
            assert env_of.get("RAY_AUTH_MODE") == "token" and env_of.get("RAY_AUTH_TOKEN_PATH"), sorted(env_of)
            assert SECRET not in json.dumps(env_of), "a Ray node got the driver's credentials"
            assert not any(SECRET in arg for arg in raylet.cmdline)
        rc = job.wait(timeout=900)
        output = log.read_text(errors="replace")
        assert rc == 0, tail(log, 80)
        # The script stopped what it started (before the clean-up below could hide that it did not).
        wait_for(lambda: not [p for p in processes().values() if any(str(ray_tmp) in a for a in p.cmdline)],
                 "the Ray nodes' processes to end", timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
        for node in nodes:
            node.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "2 of 2 Ray nodes up" in output
    assert re.search(r"alorectl sweep \S+tiny.yaml --name slurmtiny --address 127\.0\.0\.1:\d+ --workdir ", output)
    assert "done demo/digits/alore" in output and "the sweep driver exited with status 0" in output
    assert SECRET not in output
    db = work / "leaderboard.db"
    trials = query(db, "SELECT t.trial_key, t.status, t.node_id FROM trial t")
    assert len(trials) == 3 and all(t[1] == "done" for t in trials), trials
    assert len({t[2] for t in trials if t[0].startswith("search")}) == 2, f"not across both nodes: {trials}"
    assert query(db, "SELECT name, status FROM sweep") == [("slurmtiny", "done")]
    assert "Ray nodes stopped" in output
    assert not list((work / ".ray-auth").glob("*.token")), "the job's Ray token outlived the job"
