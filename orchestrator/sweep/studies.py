"""The sweep's Optuna studies in Optuna's own storage: one journal file in the work folder.

Each cell's study is named ``<sweep>/<backbone>/<task>/<method>``; its user
attributes carry the cell's plan (grid, budget, exhaustive or not, seeds,
epochs, scheduler) and each of its trials is one search trial of the cell, in
the state it ended in (COMPLETE / PRUNED with its per-epoch val200 / FAIL) with
``search_index`` and ``trial_key`` attributes. ``optuna-dashboard <journal>``
opens them (:func:`dashboard_command`).

Why a ``JournalStorage`` file (``JournalFileBackend``) and not ``RDBStorage`` on
the sweep's database: Optuna's RDB schema keeps its own Alembic revision in
the table ``alembic_version``, the very table our migrations use; on our
database Optuna reads our revision and refuses to start ("no longer
compatible"), and ``alembic check`` would meet ~12 foreign tables. Giving
Optuna a database of its own would be a second SQLite file on the laptop and a
second database or schema on PostgreSQL. The journal is the same on both: the
driver (the studies' one writer, like the database's) writes it in the work
folder, owner-only like the rest of it; it is plain JSON lines (nothing
unpickled), and every finished trial is one appended line.

One source of truth for restore: the searcher's JSON, which Tune saves together
with its trials in one experiment checkpoint. The studies mirror it the way
MLflow mirrors the database:

* never half-written: a finished trial enters its study in one operation (one
  journal line, ``Study.add_trial`` of a frozen trial with its state,
  intermediate values and attributes); a line cut by a kill is dropped when the
  journal is opened next;
* complete after a crash: the journal is written before Tune can checkpoint
  the searcher, so it never lags the saved JSON; it can be ahead (trials that
  ended after Tune's last checkpoint, which Tune then runs again). When a
  restored searcher first touches the studies, a study that holds anything its
  JSON does not (or differs from it) is rebuilt from the JSON, and trials the
  JSON has that the study lacks are added.

The searcher samples from an in-memory twin of each study (rebuilt from the
same JSON), so no RUNNING trial is ever written to the journal.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from .plan import CellPlan, SweepPlan
from .search_state import SearchEntry

JOURNAL = "optuna.journal"  # <workdir>/optuna.journal: the one place the file name is spelled
INDEX = "search_index"      # a study trial's user attribute: which search trial of its cell it is

STATES = {"done": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
          "failed": optuna.trial.TrialState.FAIL}


def journal_path(workdir: Path) -> Path:
    return Path(workdir).resolve() / JOURNAL


def dashboard_command(workdir: Path) -> str:
    return f"optuna-dashboard {shlex.quote(str(journal_path(workdir)))}"


def study_name(sweep: str, backbone: str, task: str, method: str) -> str:
    return f"{sweep}/{backbone}/{task}/{method}"


def open_journal(workdir: Path, create: bool = True) -> JournalStorage | None:
    """The work folder's journal storage.

    ``create``: the driver, the journal's one writer, opening it for a sweep: the file is created owner-only if
    missing, and a last line cut short by a kill is dropped (Optuna would refuse the line written after it).
    Readers (``create=False``) get None when there is no journal and leave the file as it is (Optuna's reader
    skips an unfinished last line, which may be a line the driver is writing right now)."""
    path = journal_path(workdir)
    if not create and not path.is_file():
        return None
    if create:
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        _drop_cut_line(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return JournalStorage(UnsyncedJournal(str(path)) if create else JournalFileBackend(str(path)))


class UnsyncedJournal(JournalFileBackend):
    """Optuna's journal file as the driver writes it: the same lines under the same lock as Optuna's own
    writer (the dashboard, which may add notes, takes that lock too), without an ``fsync`` per append.

    The driver writes the studies on Ray Tune's event loop, a line or more per search trial. An ``fsync`` waits
    for the disk, and while 64 trials write their checkpoints the disk is slow: the loop would stall with it,
    and every slot waits for a loop that is waiting for the disk. A line written is in the OS's page cache,
    so a killed driver loses nothing; an OS crash can lose the last lines, which the next restore adds back
    from the searcher's JSON (see "complete after a crash" above)."""

    def __init__(self, path: str) -> None:
        self.path, self.lock = path, JournalFileSymlinkLock(path)
        super().__init__(path, lock_obj=self.lock)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self.lock.acquire()
        try:
            with open(self.path, "ab") as f:
                f.write(text.encode("utf-8"))
        finally:
            self.lock.release()


def _drop_cut_line(path: Path) -> None:
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def dists(cp: CellPlan) -> dict[str, optuna.distributions.BaseDistribution]:
    return {k: optuna.distributions.CategoricalDistribution(v) for k, v in cp.space.items()}


def frozen(cp: CellPlan, index: int, entry: SearchEntry) -> optuna.trial.FrozenTrial:
    """Search trial ``index`` as Optuna sees it once it ended: its state, value (COMPLETE only), per-epoch val200."""
    state = STATES[entry.status]
    attrs = {INDEX: index, "trial_key": f"search-{index:02d}", "epochs": entry.epochs}
    if entry.warm_start_from:
        attrs["warm_start_from"] = entry.warm_start_from
    return optuna.trial.create_trial(
        state=state, params=entry.params, distributions=dists(cp),
        value=entry.value if state == optuna.trial.TrialState.COMPLETE else None,
        intermediate_values=dict(entry.points()), user_attrs=attrs)


def plan_attrs(plan: SweepPlan, cp: CellPlan) -> dict[str, Any]:
    """What the dashboard shows of the cell's plan (study user attributes)."""
    return {"sweep": plan.name, **cp.cell.as_dict(), "grid": cp.space, "grid_size": cp.grid_size,
            "budget": cp.n_search, "exhaustive": cp.exhaustive, "algorithm": plan.algorithm,
            "scheduler": plan.scheduler, "seeds": list(cp.seeds), "epochs": cp.run.epochs}


def _signature(t: optuna.trial.FrozenTrial) -> tuple:
    return (t.user_attrs.get(INDEX), t.state, repr(sorted(t.params.items())), t.value,
            repr(sorted(t.intermediate_values.items())))


class Studies:
    """A sweep's studies in one storage; written only by the driver's searcher."""

    def __init__(self, storage: optuna.storages.BaseStorage, plan: SweepPlan) -> None:
        self.storage, self.plan = storage, plan
        self._loaded: dict[str, optuna.Study] = {}

    def name(self, cp: CellPlan) -> str:
        return study_name(self.plan.name, cp.cell.backbone, cp.cell.task, cp.cell.method)

    def study(self, cp: CellPlan) -> optuna.Study:
        name = self.name(cp)
        if name not in self._loaded:
            study = optuna.create_study(storage=self.storage, study_name=name, direction="maximize",
                                        load_if_exists=True)
            attrs = plan_attrs(self.plan, cp)
            for key, value in attrs.items():
                if study.user_attrs.get(key) != value:
                    study.set_user_attr(key, value)
            self._loaded[name] = study
        return self._loaded[name]

    def mirror(self, cp: CellPlan, search: list[SearchEntry]) -> None:
        """Make the cell's study hold exactly the finished entries of ``search`` (the searcher's state)."""
        want = {i: frozen(cp, i, e) for i, e in enumerate(search) if e.status in STATES}
        study = self.study(cp)
        have = {t.user_attrs.get(INDEX): t for t in study.get_trials(deepcopy=False)}
        if any(i not in want or _signature(t) != _signature(want[i]) for i, t in have.items()):
            # Ahead of the JSON (trials Tune runs again after its restore) or not this JSON's at all: rebuilt.
            optuna.delete_study(study_name=self.name(cp), storage=self.storage)
            self._loaded.pop(self.name(cp), None)
            study, have = self.study(cp), {}
        for i in sorted(set(want) - set(have)):
            study.add_trial(want[i])

    def record(self, cp: CellPlan, index: int, entry: SearchEntry) -> None:
        """One search trial that just ended: one journal line."""
        self.study(cp).add_trial(frozen(cp, index, entry))


# The driver opens the journal and hands it to the searcher here: Tune pickles the searcher (and unpickles it
# on restore), and a live storage must not travel in a pickle. Looked up at call time, like Events.RECEIVER.
_ACTIVE: dict[str, tuple[optuna.storages.BaseStorage, dict[str, list[dict[str, Any]]]]] = {}


def use(sweep: str, storage: optuna.storages.BaseStorage | None,
        warm: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """Hand the sweep's storage (and its cells' warm-start configurations, :func:`warm_starts`) to its searcher."""
    if storage is None:
        _ACTIVE.pop(sweep, None)
    else:
        _ACTIVE[sweep] = (storage, warm or {})


def for_plan(plan: SweepPlan) -> Studies:
    """The sweep's studies in the storage the driver opened; in memory when none was (a searcher on its own)."""
    storage, _ = _ACTIVE.get(plan.name) or (optuna.storages.InMemoryStorage(), {})
    return Studies(storage, plan)


def warm_start(plan: SweepPlan, cp: CellPlan) -> list[dict[str, Any]]:
    """The configurations the driver handed over for the cell's first search trials (``{"params", "from"}``)."""
    return list((_ACTIVE.get(plan.name) or (None, {}))[1].get(cp.cell.key, []))


# ---- warm start from earlier sweeps -------------------------------------------------------------------------

WARM_MAX = 3  # at most this many configurations per cell, and at most half its search budget (at least one)


def sweeps_in(storage: optuna.storages.BaseStorage) -> list[str]:
    """The sweeps that have studies in ``storage``."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    return sorted({n.split("/", 1)[0] for n in names if n.count("/") == 3})


def warm_starts(storage: optuna.storages.BaseStorage, plan: SweepPlan, sources: list[str] | tuple[str, ...],
                warn: Any = lambda message: None) -> dict[str, list[dict[str, Any]]]:
    """Per cell key, the best configurations (complete trials by val200, best first) of the same (task, method)
    in the studies of the sweeps ``sources``, on any backbone; a configuration outside the cell's grid is
    skipped with a warning. Enqueued (``enqueue_trial``) as the cell's first search trials: the budget stays."""
    if not sources:
        return {}
    summaries = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    out: dict[str, list[dict[str, Any]]] = {}
    for cp in plan.cells:
        found = []
        for name in summaries:
            sweep, _, rest = name.partition("/")
            if sweep not in sources or rest.split("/")[1:] != [cp.cell.task, cp.cell.method]:
                continue
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            found += [(t.value, name, t.params) for t in trials]
        chosen: list[dict[str, Any]] = []
        limit = min(WARM_MAX, max(1, cp.n_search // 2))
        for value, name, params in sorted(found, key=lambda f: -f[0]):
            point = {k: params.get(k) for k in cp.space}
            if set(params) != set(cp.space) or any(point[k] not in cp.space[k] for k in cp.space):
                warn(f"warm start: {name}'s configuration {params} (val {value:.2f}) is outside the grid of "
                     f"{cp.cell.backbone}/{cp.cell.task}/{cp.cell.method}; skipped")
                continue
            if point not in (c["params"] for c in chosen) and len(chosen) < limit:
                chosen.append({"params": point, "from": name})
        if chosen:
            out[cp.cell.key] = chosen
    return out


def load(storage: optuna.storages.BaseStorage, sweep: str, backbone: str, task: str, method: str) -> optuna.Study:
    return optuna.load_study(study_name=study_name(sweep, backbone, task, method), storage=storage)
