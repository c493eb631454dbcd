"""Pre-flight: what a sweep can check before Ray starts and before anything is written.

Every check here is cheap next to one trial and refuses with one line (an :class:`AloreError`, exit 2) that
names the bad value and the fix:

- the weights files parse as tensors and fit their backbone (built on the meta device: no memory);
- every image of every split is present, the first of each split decodes, the split files parse (what
  ``alorectl data check`` does without ``--decode-all``);
- the tracking URI has a scheme MLflow's client supports here, the Ray address is one this machine can use;
- the seeds are distinct;
- the resources asked per trial fit on one node: the embedded Ray's machine before Ray starts, a cluster's
  nodes right after connecting (:func:`check_cluster`);
- a rerun under an existing sweep name asks for the same plan (:func:`check_same_plan`).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alore.errors import ConfigError, DataError

from .plan import SweepPlan
from .preset import Preset

#: MLflow tracking URI schemes a sweep can log to: a tracking server, or a database store.
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql")


def check_request(preset: Preset, address: str | None, tracking_uri: str, db_url: str) -> None:
    """What the request asks for, before any file is read or written: seeds, tracking URI, Ray address,
    resources per trial on the embedded Ray's machine (repeated seeds: the preset's rule), SQLite stores we can read and write."""
    check_tracking_uri(tracking_uri)
    check_sqlite_file(db_url, "--db")
    check_sqlite_file(tracking_uri, "--tracking-uri")
    if address:
        check_address_kind(address)
    else:
        check_local_resources(preset.cpus_per_trial, preset.gpus_per_trial)


def check_inputs(plan: SweepPlan) -> None:
    """The plan's files: weights and data, as ``train`` checks them before it writes."""
    check_weights(plan)
    check_data(plan)


def check_tracking_uri(uri: str) -> None:
    scheme = urlsplit(uri).scheme.split("+", 1)[0].lower()
    if scheme in ("", "file"):
        raise ConfigError(f"tracking URI {uri!r} is an MLflow file store, which alorectl does not log to; use "
                          "sqlite:///PATH/mlflow.db (the default in the work folder) or an MLflow server http://HOST:5000")
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"unsupported tracking URI scheme {scheme!r} in {uri!r}; valid choices: "
                          f"{', '.join(TRACKING_SCHEMES)} (e.g. http://HOST:5000 or sqlite:///PATH/mlflow.db)")


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(url: str, flag: str) -> None:
    """An SQLite store that exists is a database file (not something else, not cut short) that we may write."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    if not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        raise ConfigError(f"{path} is not an SQLite database (corrupt or another kind of file); move it aside "
                          f"(or restore a backup), or pass {flag} elsewhere")
    st = path.stat()
    writable = bool(st.st_mode & stat.S_IWUSR) if st.st_uid == os.getuid() else os.access(path, os.W_OK)
    if not writable:
        raise ConfigError(f"{path} is read-only; make it writable (chmod u+w {path}) or pass {flag} elsewhere")


def check_address_kind(address: str) -> None:
    """``ray://`` is Ray Client, which needs the ``ray[client]`` extra (gRPC)."""
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ConfigError(f"--address {address} uses Ray Client, which is not installed here; install it with "
                          "pip install 'ray[client]', or give the head's GCS address (HEAD_IP:6379) from a cluster node")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_local_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """The embedded Ray gets this machine's CPUs and GPUs: a trial that asks for more would wait for ever."""
    cpus, gpus = os.cpu_count() or 1, _local_gpus()
    if cpus_per_trial > cpus:
        raise ConfigError(f"--cpus-per-trial {cpus_per_trial:g} is more than this machine's {cpus} CPUs; a trial "
                          f"could never start (use --cpus-per-trial {cpus} or less, or --address a cluster)")
    if gpus_per_trial > gpus:
        have = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} but this machine has {have}; a trial could never "
                          f"start (use --gpus-per-trial {min(gpus, 1) if gpus else 0}, or --address a GPU cluster)")


def check_cluster(cpus_per_trial: float, gpus_per_trial: float) -> str | None:
    """Right after connecting to a cluster: refuse when no node can ever fit one trial; a note when the
    cluster only is busy now (trials wait for a free node), else None."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    need = f"{cpus_per_trial:g} CPU" + (f" + {gpus_per_trial:g} GPU" if gpus_per_trial else "")
    if not any(r.get("CPU", 0) >= cpus_per_trial and r.get("GPU", 0) >= gpus_per_trial for r in nodes):
        biggest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        raise ConfigError(f"no node of the Ray cluster can fit one trial ({need}); its largest node has "
                          f"{biggest.get('CPU', 0):g} CPU + {biggest.get('GPU', 0):g} GPU (lower --cpus-per-trial / "
                          "--gpus-per-trial, or add a node that has them)")
    free = ray.available_resources()
    if free.get("CPU", 0) < cpus_per_trial or free.get("GPU", 0) < gpus_per_trial:
        return (f"the Ray cluster is busy: trials wait for {need} to come free (free now: {free.get('CPU', 0):g} "
                f"CPU, {free.get('GPU', 0):g} GPU)")
    return None


def check_weights(plan: SweepPlan) -> None:
    """Each backbone's weights file parses and fits the backbone, as ``train`` checks before it writes."""
    from alore import backbones

    seen: set[tuple[str, str]] = set()
    for cp in plan.cells:
        name, weights = cp.cell.backbone, cp.run.weights
        if not weights or weights == backbones.RANDOM or weights.startswith("timm:") or (name, weights) in seen:
            continue
        seen.add((name, weights))
        path = Path(weights)
        if path.suffix == ".npz":
            _check_npz(path)
            continue
        with warnings.catch_warnings():  # copying into meta tensors is a no-op torch warns about
            warnings.simplefilter("ignore")
            backbones.create_backbone(name, 0, path, device="meta")


def _check_npz(path: Path) -> None:
    import zipfile

    import numpy as np

    from alore.backbones import WeightsError

    try:
        with np.load(path, allow_pickle=False) as archive:
            if not archive.files:
                raise ValueError("no arrays")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise WeightsError(f"{path} is not a valid numpy .npz weights file ({err.__class__.__name__})") from None


def check_data(plan: SweepPlan) -> None:
    """Split files parse, every image listed is there, the first image of each split decodes."""
    from alore.data.check import check_task

    done: set[tuple[str, str, str]] = set()
    for cp in plan.cells:
        run = cp.run
        key = (run.data_root, run.suite, cp.cell.task)
        if key in done:
            continue
        done.add(key)
        report = check_task(Path(run.data_root), run.suite, cp.cell.task)
        bad = [p for p in report.problems if _fatal(p)]
        if bad:
            more = f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(f"task {cp.cell.task}: {bad[0]}{more}; fix the data, then check it with: alorectl data "
                            f"check --root {run.data_root} --tasks {cp.cell.task}")


def _fatal(problem: str) -> bool:
    """What would fail a trial: a missing or undecodable image, a split file that does not parse. (Split
    sizes that differ from the benchmark's are the user's choice, as ``train`` allows them.)"""
    return not any(word in problem for word in (" entries", "expected ", " images in both ", "not train800 + val200"))


def check_same_plan(name: str, stored: dict[str, Any], preset: Preset) -> None:
    """A rerun of a recorded sweep continues its plan; other inputs under the same name are refused (what
    was recorded must stay what was used)."""
    new = preset.to_dict()
    differ = [k for k in new if k in stored and k != "name" and stored[k] != new[k]]
    if differ:
        shown = "; ".join(f"{k}: {_short(stored[k])} -> {_short(new[k])}" for k in differ[:3])
        more = f" (+{len(differ) - 3} more)" if len(differ) > 3 else ""
        raise ConfigError(f"sweep {name!r} was recorded with other inputs ({shown}{more}); resume it as it was "
                          f"(alorectl sweep resume {name}), or start a new one with --name NEW, or replace it "
                          f"with --force-new")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."



#: HTTP/2's connection preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, Ray Client's server)
#: answers with a SETTINGS frame of its own.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def check_speaks_ray(address: str, timeout: float = 5.0) -> None:
    """An address whose port answers but is not Ray (a web server, SSH, a database) would make ``ray.init``
    wait for ever: Ray's servers speak gRPC, so a port that does not answer HTTP/2's preface with a SETTINGS
    frame within ``timeout`` seconds is refused in one line."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_H2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = conn.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except (OSError, ValueError):
        reply = b""
    if len(reply) < 9 or reply[3] != 0x04:
        raise ConfigError(f"{address} answers but is not a Ray cluster (no gRPC reply in {timeout:g}s); check "
                          "--address / RAY_ADDRESS: the head's GCS port, e.g. HEAD_IP:6379")
