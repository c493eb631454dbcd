"""MLflow logging, done by the driver only, through MLflow's own client.

The driver is the one writer: with the embedded SQLite store, many trial
processes writing one file is the classic "database is locked", and trials
never need the tracking URI (so the Ray pitfall of trials logging to a local
``mlruns`` cannot happen). Every write is keyed by tags and safe to repeat: a
resumed sweep finds its runs again instead of duplicating them.

What is logged where is :mod:`alorectl.tracking.observer`; this module is the guarded
client: every failure becomes :class:`TrackingUnavailable` with no credentials.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from mlflow import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from alore.errors import AloreError, first_line
from alorectl.db.urls import mask_text

#: MLflow's settings for a client that must not stall a sweep, applied by :func:`configure` (never at import).
#: A tracking server that went away should cost seconds, not MLflow's default minutes of retries: the sweep
#: goes on and the cell is logged later (see :mod:`alorectl.tracking.observer`); and MLflow's "View run ... at:
#: <tracking URI>" line on every finished run would be noise in a progress display. MLflow 3's usage telemetry
#: wraps every client call and ships records from background threads: a cluster's driver, often offline, must
#: spend nothing on it (a user who wants it sets MLFLOW_DISABLE_TELEMETRY=false).
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def configure(credentials: dict[str, str] | None = None) -> None:
    """Make this process an MLflow client: the settings above (a user's own values win) and, for an http(s)
    server with ``user:password@``, its credentials.

    MLflow's public client reads HTTP credentials only from the environment (or ``~/.mlflow/credentials``), so
    the one process that talks to the server holds them there; it is called by :class:`Tracker` and the UI's
    link printer, after Ray has started, so no Ray worker inherits them.
    """
    for key, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(key, value)
    os.environ.update(credentials or {})
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema set-up chatter on first use


COMPLETE = "alore.complete"  # the tag written last: a run without it is unfinished and is redone


class TrackingUnavailable(Exception):
    """MLflow could not be written; the message has no credentials."""


def guarded(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TrackingUnavailable:
            raise
        except Exception as err:  # any client or transport failure: the server is away or refuses
            first = first_line(err)
            raise TrackingUnavailable(mask_text(f"{type(err).__name__}: {first}")[:300]) from None

    return wrapper


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = mask_text(str(value))[:6000]  # no credentials in params
    return out


def split_credentials(uri: str) -> tuple[str, dict[str, str]]:
    """An http(s) tracking URI without ``user:password@``, and the credentials as the environment entries
    MLflow reads (nothing is set here): no URL MLflow builds or prints can carry them."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return uri, {}
    credentials = {}
    if parts.username is not None:
        credentials[USERNAME] = unquote(parts.username)
    if parts.password is not None:
        credentials[PASSWORD] = unquote(parts.password)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), credentials


def bare_uri(uri: str) -> str:
    """``uri`` without credentials, to show or to build links from."""
    return split_credentials(uri)[0]


def sqlite_file(uri: str) -> Path | None:
    """The database file of an SQLite tracking URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(unquote(uri.removeprefix("sqlite:///").split("?", 1)[0]))


@contextlib.contextmanager
def first_use(store: Path) -> Iterator[None]:
    """Hold ``<store>.lock`` (an ``fcntl.flock``, waiting) while this process makes the first use of an SQLite
    MLflow store, so that only one process creates and migrates a new database.

    MLflow's tracking store migrates a new database in its constructor without a lock (only its server takes
    one), and two migrations at once fail ("duplicate column name", "table ... already exists"): two sweeps
    of different names started together in a new work folder (one name is one driver: ``sweep/lock.py``).
    The lock file is made before the database, so a process that finds the database but no lock file finds a
    store someone else made (an MLflow server, an older alore) and needs no lock; the kernel drops the lock
    when its holder exits, however it exits.
    """
    lock = store.with_name(f"{store.name}.lock")
    if store.exists() and not lock.exists():
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


_UNSYNCED: set[str] = set()  # SQLite MLflow stores whose connections in this process commit without an fsync


def unsynced(store: Path) -> None:
    """The SQLite MLflow store ``store`` in WAL mode, and this process's connections to it at ``synchronous =
    NORMAL``: a commit appends to the WAL and does not wait for the disk (alore's own database is opened the
    same way, :mod:`alorectl.db.session`).

    MLflow opens SQLite in its default rollback-journal mode with ``synchronous = FULL``: each commit syncs the
    journal and the database file, and a trial's run is four commits. While 64 trials write their checkpoints
    the disk is slow, and the driver's MLflow thread fell behind the trials by up to 80 s in the paper's whole
    sweep (``alorectl bench scale``). With WAL a committed run survives a killed driver; an OS crash can lose
    the last commits, and MLflow mirrors the database: ``sweep resume`` logs what it is missing. WAL also lets
    the MLflow UI read while the driver writes. MLflow offers no setting for either, so the connection
    pragma is set by SQLAlchemy's public ``connect`` event, for this file only. An existing store that another
    process holds open stays in the mode it has (converting needs it alone)."""
    path = str(store.resolve())
    if not _UNSYNCED:
        event.listen(Engine, "connect", _unsynced_connection)
    _UNSYNCED.add(path)
    if not store.exists():
        os.close(os.open(store, os.O_WRONLY | os.O_CREAT, 0o600))
    with contextlib.suppress(sqlite3.OperationalError), contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")


def _unsynced_connection(connection: Any, record: Any) -> None:
    if isinstance(connection, sqlite3.Connection):
        main = next((row[2] for row in connection.execute("PRAGMA database_list") if row[1] == "main"), None)
        if main in _UNSYNCED:
            connection.execute("PRAGMA synchronous = NORMAL")


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path | None = None, unsynced_store: bool = False) -> None:
        """``unsynced_store``: the sweep's driver, which writes thousands of runs, opens an SQLite store with
        :func:`unsynced`; every other command leaves the store's file as it finds it."""
        uri, credentials = split_credentials(tracking_uri)
        configure(credentials)
        self._uri, self._client = uri, None
        self.artifact_root, self.unsynced_store = artifact_root, unsynced_store

    @property
    def client(self) -> MlflowClient:
        """MLflow's client, made on first use (MLflow opens the store in its constructor: a new SQLite store is
        created and migrated there, so that happens under :func:`first_use`). It raises what MLflow raises:
        the guarded methods below turn that into :class:`TrackingUnavailable`."""
        if self._client is None:
            store = sqlite_file(self._uri)
            with first_use(store) if store is not None else contextlib.nullcontext():
                if store is not None and self.unsynced_store:
                    unsynced(store)
                self._client = MlflowClient(self._uri)
        return self._client

    @guarded
    def experiment(self, name: str, former: str | None = None) -> str:
        """The id of experiment ``name``, created if missing; one still under its ``former`` name (a store
        written by an earlier alorectl) is renamed to ``name`` and kept, runs and all."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        old = self.client.get_experiment_by_name(former) if former else None
        if old is not None:
            self.client.rename_experiment(old.experiment_id, name)
            return old.experiment_id
        location = (self.artifact_root / name.replace("/", "_")).as_uri() if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    @guarded
    def run_tags(self, run_id: str) -> dict[str, str] | None:
        """The tags of ``run_id``; None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_run(run_id).data.tags)
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    @guarded
    def describe(self, experiment_id: str, text: str, **view: Any) -> None:
        """The experiment's description and the saved runs-table view (columns, sort) the UI opens."""
        from .links import setup_experiment

        setup_experiment(self.client, experiment_id, text, **view)

    @guarded
    def find_run(self, experiment_id: str, key: str) -> Any | None:
        """The live run tagged ``alore.key == key``, or None."""
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`alore.key` = '{key}'", max_results=1)
        return found[0] if found else None

    @guarded
    def create_run(self, experiment_id: str, key: str, name: str, tags: dict[str, str], parent: str | None = None,
                   start_time: int | None = None) -> str:
        tags = {**tags, "alore.key": key}
        if parent:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        return self.client.create_run(experiment_id, tags=tags, run_name=name, start_time=start_time).info.run_id

    @guarded
    def find_or_create_run(self, experiment_id: str, key: str, name: str, tags: dict[str, str],
                           parent: str | None = None, start_time: int | None = None) -> str:
        """The run tagged ``alore.key == key`` (complete or not: a parent is filled in place), else a new one."""
        found = self.find_run(experiment_id, key)
        if found is not None:
            return found.info.run_id
        return self.create_run(experiment_id, key, name, tags, parent, start_time)

    @guarded
    def runs_by_key(self, experiment_id: str) -> dict[str, tuple[str, bool]]:
        """Every live run of the experiment tagged ``alore.key``: key -> (run id, complete), in a few paged
        searches (a complete run wins over one cut short under the same key)."""
        out: dict[str, tuple[str, bool]] = {}
        token = None
        while True:
            page = self.client.search_runs([experiment_id], max_results=1000, page_token=token)
            for r in page:
                key = r.data.tags.get("alore.key")
                complete = r.data.tags.get(COMPLETE) == "1"
                if key is not None and (key not in out or complete):
                    out[key] = (r.info.run_id, complete)
            token = page.token
            if not token:
                return out

    @guarded
    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    @guarded
    def complete(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        """Mark ``run_id`` finished and complete: written last, after everything else the run holds."""
        self.client.set_terminated(run_id, status=status, end_time=end_time)
        self.client.set_tag(run_id, COMPLETE, "1")

    @guarded
    def log(self, run_id: str, params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
            history: list[dict[str, Any]] | None = None, tags: dict[str, str] | None = None, step: int = 0,
            fresh: bool = False, complete: str | None = None, end_time: int | None = None) -> None:
        """Params, metrics (a summary at ``step`` and the per-epoch ``history``) and tags, in as few calls as
        MLflow's batch limits allow (each call is a transaction of the store). ``fresh``: a run just created,
        so no parameter can be logged already (MLflow refuses to change one) and none is looked up.
        ``complete``: the run's final status; the run is ended first and :data:`COMPLETE` goes into the last
        batch, so the run is complete in the same transaction as the last of what it holds (what
        :meth:`complete` does in two more)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _finite(v)]
        for row in history or []:
            step = int(row.get("epoch", row.get("training_iteration", 0)))
            stamp = int(float(row["timestamp"]) * 1000) if _finite(row.get("timestamp")) else now
            # "lr" is also a searched parameter: the per-epoch learning rate is "lr_now".
            batch += [Metric(HISTORY.get(k, k), float(v), stamp, step) for k, v in row.items()
                      if k in HISTORY and _finite(v)]
        existing = set(self.client.get_run(run_id).data.params) if params and not fresh else set()
        plist = [Param(k, v) for k, v in flatten(params or {}).items() if k not in existing]
        tlist = [RunTag(k, v) for k, v in (tags or {}).items()]
        calls = batches(plist, batch, tlist)
        if complete is not None:
            self.client.set_terminated(run_id, status=complete, end_time=end_time)
            p, m, t = calls[-1] if calls else ([], [], [])
            if calls and len(t) < BATCH_TAGS and len(p) + len(m) + len(t) < BATCH_ENTITIES:
                calls[-1] = (p, m, [*t, RunTag(COMPLETE, "1")])
            else:
                calls.append(([], [], [RunTag(COMPLETE, "1")]))
        for p, m, t in calls:
            self.client.log_batch(run_id, metrics=m, params=p, tags=t)

    @guarded
    def artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    @guarded
    def artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    @guarded
    def model(self, run_id: str, backbone: str, suite: str, source: Path, card: dict[str, Any]) -> bool:
        """The merged weights in ``source`` as the run's MLflow model (:mod:`alorectl.tracking.models`)."""
        from .models import log_model

        return log_model(self.client, run_id, backbone, suite, source, card)

    @guarded
    def register_best(self, candidates: list[dict[str, Any]]) -> list[Any]:
        """Per (backbone, task), the candidate with the best val accuracy that has a model, registered."""
        from .models import has_model, register

        done = []
        for key in dict.fromkeys((c["backbone"], c["task"]) for c in candidates):
            ranked = sorted((c for c in candidates if (c["backbone"], c["task"]) == key and c.get("mlflow_run_id")
                             and c.get("val_acc") is not None), key=lambda c: -c["val_acc"])
            best = next((c for c in ranked if has_model(self.client, c["mlflow_run_id"])), None)
            if best is not None:
                done.append(register(self.client, *key, best["mlflow_run_id"], best["val_acc"],
                                     tags={"method": best["method"], "sweep": str(best.get("sweep", ""))}))
        return done


#: MLflow's limits on one ``log_batch`` call (``mlflow.utils.validation``), with room to spare.
BATCH_PARAMS, BATCH_TAGS, BATCH_ENTITIES = 90, 90, 900


def batches(params: list, metrics: list, tags: list) -> list[tuple[list, list, list]]:
    """Split params, metrics and tags into ``log_batch`` calls within MLflow's limits (at most 100 params,
    100 tags, 1000 entities per call); a small run's whole record is one call."""
    out: list[tuple[list, list, list]] = []
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        p, params = params[:BATCH_PARAMS], params[BATCH_PARAMS:]
        t, tags = tags[:BATCH_TAGS], tags[BATCH_TAGS:]
        room = BATCH_ENTITIES - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        out.append((p, m, t))
    return out


HISTORY = {"train_loss": "train_loss", "train_acc": "train_acc", "val_acc": "val_acc", "test_acc": "test_acc",
           "lr": "lr_now", "images_per_s": "images_per_s"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ForeignRun(AloreError):
    """A run named by a card or a result row belongs to another cell: nothing is logged into it."""


def check_run_of(tracker: Tracker, run_id: str, backbone: str, task: str, method: str) -> None:
    """Refuse to log into ``run_id`` unless MLflow has it as a run of ``backbone``/``task``/``method`` (the tags
    every sweep run carries); :class:`TrackingUnavailable` when MLflow cannot be asked."""
    tags = tracker.run_tags(run_id)
    if tags is None:
        raise ForeignRun(f"MLflow run {run_id} is not in the tracking store; nothing is logged (pass the "
                         "--tracking-uri the result was logged to)")
    owner = tuple(tags.get(k) for k in ("backbone", "task", "method"))
    if owner != (backbone, task, method):
        shown = "/".join(str(v) if v is not None else "?" for v in owner)
        raise ForeignRun(f"MLflow run {run_id} belongs to {shown}, not to {backbone}/{task}/{method}; refusing to "
                         "log into another cell's run")
