"""Run: Ray Tune only. One Tune experiment per sweep, every cell in flight at once.

The experiment lives in ``<workdir>/ray/<sweep>``; a trial's folder is named by
its spec (``<backbone>__<task>__<method>__search-03``). The searcher
(:mod:`alorectl.sweep.searcher`) hands out search trials of every cell in the plan's
order, and a cell's final trials as soon as its search ends; Ray places them on
whatever slot is free. ``ConcurrencyLimiter`` is the one bound on trials in
flight (``--max-concurrent-trials``; by default the cluster's slots), which is
also what lets Tune keep that many trials pending for a custom searcher.

Trust boundary: ``Tuner.restore`` unpickles files from the experiment folder, so
the work folder is treated like ``~/.ssh``: created owner-only, and a folder or
file that another user owns or could have written is refused before anything
is restored from it. Restoring happens only when the caller says so (``sweep
resume``, or a rerun of a sweep already recorded in the database).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from alore.errors import AloreError, first_line

from alorectl.security import check_trusted, inside, make_private
from .cadence import Policy, asha_rungs, expand
from .plan import SweepPlan, TrialSpec
from .searcher import METRIC, MODE, Search, SweepSearcher
from .searcher import Limiter as RetryLimiter

#: Checkpoints Tune keeps per trial. With ``num_to_keep=N`` Tune snapshots the whole experiment's state (every
#: trial and the searcher) whenever a trial has checkpointed N times since the last snapshot, so that no
#: snapshot names a deleted checkpoint. With 1 that is on nearly every report: 16% of the driver's loop on a
#: 48-cell drill, 2% with 2; at 64 slots the driver spent 432 ms of CPU per trial with 1 and 95 ms with 2
#: (``alorectl bench scale``). With 2 the snapshot can be a report behind: a trial that ended after it is
#: restored as unfinished, and :class:`SkipRecorded` keeps it from training again.
KEEP_CHECKPOINTS = 2
#: From :data:`LARGE_SWEEP_SLOTS` slots on, 4. A trial's end checkpoint often comes seconds after its last
#: periodic one (:mod:`alorectl.sweep.cadence`), so with 2 kept some trial nearly always has two since the last
#: snapshot: in the paper's whole sweep on 64 slots the state (110 MB at 4,000 trials, pure-Python JSON) was
#: rewritten every 3-5 s, 35% of the driver's main thread (py-spy). With 4, only a trial that checkpointed 4
#: times since the last snapshot forces one. Small sweeps (the demo, the fault drills) keep 2: their state is
#: small, and a restore goes back less far.
KEEP_CHECKPOINTS_LARGE = 4
LARGE_SWEEP_SLOTS = 8


def keep_checkpoints(slots: int) -> int:
    """``num_to_keep`` for a sweep of ``slots`` trials at once."""
    return KEEP_CHECKPOINTS_LARGE if slots >= LARGE_SWEEP_SLOTS else KEEP_CHECKPOINTS


RAY_DIR = "ray"  # <workdir>/ray/<sweep>: the one place the storage layout is spelled


def storage(workdir: Path) -> Path:
    return workdir / RAY_DIR


def experiment_dir(workdir: Path, sweep: str) -> Path:
    return inside(storage(workdir), sweep)


def trial_dir(workdir: Path, spec: TrialSpec, sweep: str) -> Path:
    return inside(experiment_dir(workdir, sweep), spec.dirname)


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before anything is written, when the Ray cluster's address does not answer."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto":
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        raise AloreError(f"cannot reach the Ray cluster at {address}: {type(err).__name__}: {err} "
                         "(check --address / RAY_ADDRESS, e.g. HEAD_IP:6379)") from None


def start_ray(address: str | None, log_dir: Path | None = None) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune warns on every snapshot that two come within 5 s; how often trials report (and so how often a
    # snapshot is forced, see KEEP_CHECKPOINTS) is bounded by the sweep's cadence instead.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "5")  # a busy 2-core laptop is not a Tune bottleneck
    # Final runs report test accuracy and no val200 (there is none on train800val200); ASHA, which prunes
    # search trials on val_acc, leaves a result without it alone, but Tune's strict check would fail the trial.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    # Tune's CSV and TensorBoard loggers write every result a second and third time; the recorder (database)
    # and the tracker (MLflow) keep the same data. The JSON logger (result.json) stays: resume reads it.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": False}
    if log_dir is not None:
        # Ray's own warnings (e.g. "Token authentication is enabled") go to a file, not into the progress line.
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / "ray-driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in ("ray", "ray.tune", "ray.train"):
            logger = logging.getLogger(name)
            logger.handlers[:] = [handler]
            logger.setLevel(logging.WARNING)
            logger.propagate = False
    with _stderr_to(log_dir / "ray-driver.log" if log_dir else None):
        _init(address, kwargs)


@contextlib.contextmanager
def _stderr_to(path: Path | None) -> Iterator[None]:
    """Ray's start-up writes to file descriptor 2 from C++ and from the processes it spawns; those lines
    belong in the work folder's log, not in the terminal's progress display."""
    if path is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(fd, 2)
        with open(path, "a") as text, contextlib.redirect_stderr(text):  # Python-level writes too
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _init(address: str | None, kwargs: dict[str, Any]) -> None:
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            first = first_line(err)
            raise AloreError(f"cannot reach the Ray cluster at {address}: {first} (check the address; a cluster "
                             "with token authentication also needs RAY_AUTH_MODE=token and its token)") from None
    else:
        # "local": always a new embedded instance, never a cluster someone started with `ray start`. No
        # dashboard, and every server on the loopback interface only.
        with _loopback_only():
            ray.init(address="local", include_dashboard=False, **kwargs)


#: Ray's switch for multi-node clusters, off by default on macOS and Windows; with it off a node's address is
#: 127.0.0.1 (``ray._private.services.get_node_ip_address``).
RAY_CLUSTER_SWITCH_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Start an embedded Ray that listens on 127.0.0.1 only.

    Ray's servers (GCS, raylet, object manager, every worker) bind 127.0.0.1 when the node's address is
    127.0.0.1, and 0.0.0.0 otherwise; ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten to the host's IP
    unless Ray runs in the single-host mode it uses on macOS and Windows. That mode is read from the
    environment when ``ray`` is imported, so both the constant and the variable (inherited by the processes
    Ray spawns) are set here, for this start only: a later ``ray start`` or a driver of a real cluster must
    still see the host's IP."""
    from ray._private import ray_constants

    before_env, before_flag = os.environ.get(RAY_CLUSTER_SWITCH_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTER_SWITCH_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(RAY_CLUSTER_SWITCH_ENV, None)
        else:
            os.environ[RAY_CLUSTER_SWITCH_ENV] = before_env


def slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials the cluster can run at once with these resources (at least 1)."""
    res = ray.cluster_resources()
    fits = [res.get("CPU", 1) / cpus_per_trial] + ([res.get("GPU", 0) / gpus_per_trial] if gpus_per_trial else [])
    return max(1, int(min(fits) + 1e-9))


class Events(tune.Callback):
    """Forwards Tune's trial events to the driver. Tune pickles its callbacks with the run config and
    hands the unpickled copy back on ``Tuner.restore``; the live receiver is therefore looked up at call
    time (:data:`RECEIVER`), never pickled."""

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def setup(self, **info: Any) -> None:
        """Tune has installed its Ctrl-C handler (it stops the run and saves the experiment's state, then
        returns from ``fit`` as if the run had ended): noted here, so that :func:`fit` can say it was
        interrupted instead of the sweep reading as cells that failed."""
        tunes = signal.getsignal(signal.SIGINT)
        if callable(tunes) and threading.current_thread() is threading.main_thread():
            def noted(signum: int, frame: Any) -> None:
                global INTERRUPTED
                INTERRUPTED = True
                tunes(signum, frame)

            signal.signal(signal.SIGINT, noted)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if RECEIVER is not None:
            RECEIVER.started(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if RECEIVER is not None:
            RECEIVER.result(trial, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if RECEIVER is not None:
            RECEIVER.ended(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if RECEIVER is not None:
            error = getattr(trial, "error_file", None)
            RECEIVER.ended(trial, _last_line(error) or "the trial failed")


    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        global RESTORED
        if RESTORED is not None:  # the first step after a restore, before Tune asks for suggestions
            limiter, RESTORED = RESTORED, None
            limiter.reconcile({t.trial_id for t in trials})


RECEIVER: Any = None
INTERRUPTED = False  # Ctrl-C during fit (see Events.setup)


class Limiter(RetryLimiter):
    """The sweep's concurrency limiter (:class:`alorectl.sweep.searcher.Limiter`); when Tune restores it, it
    registers itself (:data:`RESTORED`) so that :class:`Events` can reconcile it with the restored trial list."""

    def set_state(self, state: dict) -> None:
        global RESTORED
        super().set_state(state)
        RESTORED = self

    def reconcile(self, held: set[str]) -> None:
        # A trial id Tune does not hold never completes: kept as live, it would block a slot for good.
        lost = self.live_trials - held
        self.live_trials -= lost
        self.num_unfinished_live_trials = max(0, self.num_unfinished_live_trials - len(lost))
        self.searcher.reconcile(held)


RESTORED: Limiter | None = None


class SkipRecorded:
    """The sweep's scheduler: never starts a trial the database holds as ended, and starts the newest pending
    trial first.

    *Recorded trials.* Tune's snapshot of the experiment (taken every few seconds, :data:`KEEP_CHECKPOINTS`) can
    name a trial that ended after it as still running, with an older checkpoint; restored, Tune would train its
    last epochs again. Such a trial is stopped before it starts (``stop_trial``, which the scheduler API offers),
    and the searcher takes what the database recorded (:func:`alorectl.sweep.searcher.recorded`).

    *Newest first.* Tune hands the worker of an ended trial to the trial its scheduler chooses, and if that
    trial's own worker is still starting, cancels the start (``TuneController._maybe_reuse_cached_actor``).
    FIFOScheduler chooses the oldest pending trial, whose start is the furthest along: where trials end faster
    than workers start, no start ever finishes (a resumed whole sweep on the simulated cluster: 33 of 64 slots
    training, for minutes). The newest pending trial is the one the searcher issued for the trial that just
    ended and has no worker yet: it takes the freed worker, and the starts in flight go on. A trial retried
    after its worker or node died goes before them all (oldest first): newest first would leave it waiting
    behind every trial issued after it, to the end of the sweep (a node killed at half the simulated whole
    sweep: its 8 trials trained again 490 s later). PAUSED trials
    (no scheduler of the sweep pauses) go as in FIFOScheduler. The choice costs nothing that grows with the
    number of trials the sweep has run: FIFOScheduler read every trial twice per step of Tune's loop (17% of
    the driver's main thread in the paper's whole sweep)."""

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        from ray.tune.experiment import Trial

        from .searcher import recorded

        seen = self.__dict__.setdefault("_alore_seen", {})  # trial id -> the call that first saw it PENDING
        calls = self.__dict__["_alore_calls"] = self.__dict__.get("_alore_calls", 0) + 1
        for trial in list(tune_controller.get_live_trials()):
            if trial.status != Trial.PENDING or trial.trial_id in seen:
                continue
            seen[trial.trial_id] = calls
            spec = TrialSpec.from_config(trial.config)
            if recorded(spec.cell.key, spec.key, spec.phase) is not None:
                tune_controller.stop_trial(trial)
        live = tune_controller.get_live_trials()
        pending = [t for t in live if t.status == Trial.PENDING]
        retried = [t for t in pending if t.num_failures]
        if retried:  # back after its worker or node died: it continues from its checkpoint, its cell waits
            return min(retried, key=lambda t: seen[t.trial_id])
        if pending:
            newest = max(seen[t.trial_id] for t in pending)
            pending = [t for t in pending if seen[t.trial_id] == newest]
            if len(pending) == 1:
                return pending[0]
            # Seen in the same call (the first, after a restore, two trials issued at once): the experiment's
            # order, which is the order they were issued in, decides; kept, so that it is read once per batch.
            issued = [t for t in tune_controller.get_trials() if t in pending]
            for i, t in enumerate(issued):
                seen[t.trial_id] = newest + i / len(issued)
            return issued[-1]
        paused = {t for t in live if t.status == Trial.PAUSED}
        if len(paused) == 1:
            return paused.pop()
        if paused:
            return next(t for t in tune_controller.get_trials() if t in paused)
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_alore_seen", "_alore_calls")}


class Fifo(SkipRecorded, FIFOScheduler):
    pass


class Asha(SkipRecorded, ASHAScheduler):
    pass


def _last_line(path: str | None) -> str | None:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()] if path else []
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def trial_dirname(trial: Any) -> str:
    return TrialSpec.from_config(trial.config).dirname


def check_experiment(workdir: Path, sweep: str, restore: bool) -> None:
    """Before Ray starts: an existing experiment folder is restored only when allowed and trusted."""
    path = experiment_dir(workdir, sweep)
    if path.exists():
        if not restore:
            raise AloreError(f"{path} exists but sweep {sweep!r} is not recorded in the database; "
                             f"remove it or choose another --name")
        check_trusted(storage(workdir))
        check_trusted(path)


def tuner(plan: SweepPlan, workdir: Path, *, cpus_per_trial: float, gpus_per_trial: float, epochs: int,
          max_concurrent: int | None, restore: bool) -> tune.Tuner:
    """The sweep's Tuner: restored (trials, checkpoints, the searcher's state) when ``restore`` and a
    previous run left one, else new."""
    path = experiment_dir(workdir, plan.name)
    make_private(storage(workdir))
    limit = max_concurrent or slots(cpus_per_trial, gpus_per_trial)
    grace = max(1, epochs // 10)
    # Trials report at ASHA's rungs, at the end, and otherwise at a rate the driver can take (cadence).
    policy = Policy.for_sweep(limit, asha_rungs(epochs, grace) if plan.scheduler == "asha" else ())
    trainable = tune.with_resources(trial_body(policy), {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    if path.exists():
        check_experiment(workdir, plan.name, restore)
        if tune.Tuner.can_restore(str(path)):
            # Finished trials stay finished; errored ones resume from their checkpoint.
            return tune.Tuner.restore(str(path), trainable, resume_errored=True)
    scheduler = (Asha(metric=METRIC, mode=MODE, max_t=epochs, grace_period=grace,
                      reduction_factor=2, time_attr="epoch") if plan.scheduler == "asha" else Fifo())
    # No metric on the TuneConfig: final runs score test, not val200, and the searcher and ASHA know theirs.
    # num_samples=-1: the searcher says when the sweep is done (FINISHED), so a trial it re-issues after a
    # restore (Limiter.reconcile) does not count against a fixed number of suggestions.
    config = tune.TuneConfig(search_alg=Search(Limiter(SweepSearcher(plan), limit)),
                             scheduler=scheduler, num_samples=-1, reuse_actors=True,
                             trial_dirname_creator=trial_dirname,
                             trial_name_creator=trial_dirname)  # a module's function: pickled by name, per trial
    run = tune.RunConfig(name=plan.name, storage_path=str(storage(workdir)), verbose=0,
                         callbacks=[Events(), JsonLoggerCallback()],
                         failure_config=tune.FailureConfig(max_failures=2),
                         checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints(limit)))
    return tune.Tuner(trainable, tune_config=config, run_config=run)


def trial_body(policy: Policy) -> Any:
    """The trainable: :func:`alorectl.sweep.trial.run_trial`, or, for ``alorectl bench scale`` only (the
    internal ``ALORE_SIMULATE`` setting), the simulated body of :mod:`alorectl.bench.simulated`."""
    from alorectl.bench import simulated

    table = simulated.table()
    if table is not None:
        return tune.with_parameters(simulated.run_simulated, cadence=policy, sim=table)
    from .trial import run_trial

    return tune.with_parameters(run_trial, cadence=policy)


def fit(t: tune.Tuner, receiver: Any) -> None:
    global RECEIVER, INTERRUPTED, RESTORED
    from . import searcher

    RECEIVER, INTERRUPTED = receiver, False
    searcher.RECORDED = getattr(receiver, "recorded", None)
    try:
        t.fit()
    finally:
        RECEIVER = RESTORED = searcher.RECORDED = None
    if INTERRUPTED:  # Tune saved the state and returned: an interruption, not an end
        raise KeyboardInterrupt


def history(folder: Path) -> list[dict[str, Any]]:
    """Every epoch a trial reported (Tune's ``result.json``), the latest report per epoch (a retried trial
    reports some epochs twice)."""
    rows: dict[int, dict[str, Any]] = {}
    path = folder / "result.json"
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if "epoch" in row:
                rows.update((int(r["epoch"]), r) for r in expand(row))  # a report stands for its epochs
    return [rows[e] for e in sorted(rows)]


def discard_checkpoints(folder: Path, keep_last: bool = False) -> None:
    """Remove a trial's checkpoints (Tune's ``checkpoint_*`` folders), all or all but the last; its reports
    (``result.json``) stay. Tune never reads a finished trial's checkpoints again."""
    found = sorted(folder.glob("checkpoint_*"))
    for old in found[:-1] if keep_last else found:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint_*"))
    return found[-1] if found else None

