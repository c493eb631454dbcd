"""One Tune searcher for the whole sweep: an Optuna study per cell, final runs as soon as a cell's search ends.

Why one experiment with a custom :class:`ray.tune.search.Searcher` rather than a
Tune experiment per cell: Tune schedules the trials of one experiment on every
free slot, so every cell is in flight at once without threads driving several
``Tuner.fit`` loops in one process; a cell's final trials are just the next
suggestions once its search has completed (``Searcher.suggest`` may return
``None`` — "nothing right now" — while searches are still running); and one
``Tuner.restore`` brings back every trial and this searcher's state together,
because Tune saves both in the same experiment checkpoint.

Optuna is used directly (ask/tell per cell) instead of wrapping one
``OptunaSearch`` per cell: OptunaSearch cannot be told to skip a point, and
TPE on a small categorical grid re-suggests points already tried. Here a
repeated point is told to Optuna as failed and replaced by an untried one, so
no trial repeats a configuration of its cell. When the budget covers the grid,
the cell's search is the exhaustive grid. The state saved for restore is JSON
(typed in :mod:`alorectl.sweep.search_state`: the suggestions, their values and per-epoch val200 curves); the
studies are rebuilt from it.
Each cell's study is also kept in Optuna's own storage, a mirror of that JSON
(:mod:`alorectl.sweep.studies`: where, why, and how it stays whole across kills).

Optuna learns each search trial in the state it really ended in: a trial that ran
every epoch is COMPLETE, one that ASHA stopped early is PRUNED with its per-epoch
val200 reported (``trial.report``; TPE ranks pruned trials by their last step,
below the complete ones), one that errored is FAIL.
"""

from __future__ import annotations

import itertools
import json
import random
import zlib
from collections.abc import Callable
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter, SearchGenerator, Searcher

from . import studies
from .plan import FINAL, SEARCH, CellPlan, SweepPlan, TrialSpec
from .search_state import (DONE, FAILED, PRUNED, RUNNING, CellState, Chosen, FinalEntry, SearchEntry, SearcherState,
                           Where)
from .studies import INDEX, STATES, frozen
from .studies import dists as _dists

METRIC, MODE = "val_acc", "max"

#: What the sweep's database holds for a trial that ended in an earlier run of the sweep (status, params, value,
#: epochs), or None; installed by the run layer for the length of a ``fit`` (looked up at call time, never
#: pickled with the searcher, like :data:`alorectl.sweep.experiment.RECEIVER`).
RECORDED: Callable[[str, str, str], dict[str, Any] | None] | None = None  # (cell key, trial key, phase)


def recorded(cell: str, key: str, phase: str) -> dict[str, Any] | None:
    return RECORDED(cell, key, phase) if RECORDED is not None else None


def _point(space: dict[str, list], params: dict[str, Any]) -> tuple:
    return tuple(repr(params[k]) for k in space)


class SweepSearcher(Searcher):
    def __init__(self, plan: SweepPlan) -> None:
        # No metric for Tune to enforce: final runs report test accuracy, not val200; METRIC is read here.
        super().__init__(metric=None, mode=None)
        self.plan = plan
        self.state = SearcherState.new([cp.cell.key for cp in plan.cells])
        self._plans: dict[str, CellPlan] = {}                    # cell key -> its plan (see _plan)
        self._studies: dict[str, optuna.Study] = {}
        self._asked: dict[tuple[str, int], optuna.Trial] = {}   # (cell key, search index) -> its asked trial
        self._stored: studies.Studies | None = None  # the studies in Optuna's storage (mirrors of ``state``)
        self._synced: set[str] = set()               # cells whose stored study was checked against ``state``
        self._open: list[CellPlan] | None = None     # the cells that may still issue a trial (see _open_cells)

    # Live Optuna objects never go into Tune's pickles; they are rebuilt from ``state``.
    def __getstate__(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data.update(_plans={}, _studies={}, _asked={}, _stored=None, _synced=set(), _open=None)
        return data

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    # ---- Tune's calls -------------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | str | None:
        while True:
            if self.state.reissue:  # lost in a driver kill (see reconcile): the same key again, first
                return self._reissue(trial_id, self.state.reissue.pop(0))
            spec = self._next()
            if not isinstance(spec, TrialSpec):
                return spec  # None (ask again later) or FINISHED
            if not self._adopt(spec):
                return self._issue(trial_id, spec)

    def _next(self) -> TrialSpec | str | None:
        open_cells = self._open_cells()
        for cp in open_cells:  # a cell's final runs first: they are its critical path
            spec = self._next_final(cp)
            if spec is not None:
                return spec
        for cp in open_cells:  # then search trials, in the plan's order
            if len(self._cell(cp).search) < cp.n_search:
                return self._next_search(cp)
        if not self._open_cells():  # every cell failed (perhaps just now, in _next_final) or issued its finals
            # Only once nothing runs: Tune keeps FINISHED in its checkpoint and asks no more, even for a
            # trial lost in a driver kill that a restore must re-issue (reconcile).
            if not any(e.status == RUNNING for st in self.state.cells.values() for e in st.finals):
                return Searcher.FINISHED
        return None  # searches still running: ask again later

    def _adopt(self, spec: TrialSpec) -> bool:
        """Take ``spec`` as already run when the database holds it as ended (:data:`RECORDED`): a driver killed
        between a trial's end and Tune's next snapshot of the experiment (and of this searcher) leaves a
        restored state that never issued it, and it must not train again. Its entry is what it ended with."""
        found = recorded(spec.cell.key, spec.key, spec.phase)
        if found is None:
            return False
        cp = self._plan(spec.cell.key)
        st = self._cell(cp)
        if spec.phase == FINAL:
            st.finals.append(FinalEntry(seed=spec.seed, status=DONE))
            return True
        self._sync(cp)
        entry = SearchEntry(params=dict(found["params"]), status=found["status"], value=found["value"],
                            epochs=int(found["epochs"]), curve={str(int(found["epochs"])): float(found["value"])})
        st.search.append(entry)
        asked = self._asked.pop((cp.cell.key, spec.index), None)
        if not cp.exhaustive:
            study = self._study(cp)
            if asked is not None:  # the point TPE proposed for this index was not the one that ran
                study.tell(asked, state=optuna.trial.TrialState.FAIL)
            study.add_trial(frozen(cp, spec.index, entry))
        self._store().record(cp, spec.index, entry)
        return True

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A search trial's val200 per epoch, kept for Optuna's intermediate values (a dict update: cheap)."""
        where = self.state.trials.get(trial_id)
        if where is None or where.phase != SEARCH or result.get(METRIC) is None or "epoch" not in result:
            return
        self.state.cells[where.cell].search[where.index].curve[str(int(result["epoch"]))] = float(result[METRIC])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        where = self.state.trials.get(trial_id)
        if where is None:
            return
        st = self.state.cells[where.cell]
        found = recorded(where.cell, self._key(where), where.phase)
        if found is not None:  # ended in an earlier run, stopped unrun after a restore (experiment.SkipRecorded)
            result, error = {METRIC: found["value"], "epoch": found["epochs"]}, False
        value = (result or {}).get(METRIC)
        if where.phase == SEARCH:
            entry = st.search[where.index]
            cp = self._plan(where.cell)
            entry.status = FAILED if error or value is None else DONE
            entry.error = bool(error)  # errored: Tune retries it on resume (``resume_errored``)
            entry.value = None if error else value
            entry.epochs = int((result or {}).get("epoch", 0))
            if entry.status == DONE and entry.epochs < cp.run.epochs:
                entry.status = PRUNED  # stopped early by the scheduler (ASHA)
            if entry.status != FAILED:
                entry.curve[str(entry.epochs)] = float(value)
            self._tell(cp, where.index, entry)
            if not self._sync(cp):  # (a first sync has just mirrored this entry too)
                self._store().record(cp, where.index, entry)
        else:
            final = st.finals[where.index]
            final.status, final.error = (FAILED if error else DONE), bool(error)
            if error:
                st.failed = st.failed or f"final run {final.seed} failed"

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.state.to_json(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.state = SearcherState.from_json(json.load(f))
        self._studies, self._asked, self._synced, self._open = {}, {}, set(), None
        self._retry_errored()

    def _retry_errored(self) -> None:
        """A restore retries what failed for a reason that may since have been fixed (data, disk, OOM): Tune
        reruns every errored trial (``resume_errored``), so their entries are running again, and a cell's
        "failed" flag is cleared to be decided anew from what the retried trials report."""
        for st in self.state.cells.values():
            for entry in (*st.search, *st.finals):
                if entry.status == FAILED and entry.error:
                    entry.status = RUNNING
            st.failed = None

    def reconcile(self, held: set[str]) -> list[str]:
        """After a restore, given the ids of the trials Tune restored: every entry (search or final) still
        'running' whose trial Tune does not hold is lost (the experiment checkpoint can hold this state with
        a suggestion its trial list lacks); the next suggestions re-issue it under the same key (cell, index,
        seed, params). Returns the lost trial ids."""
        lost = [tid for tid, where in self.state.trials.items()
                if tid not in held and self.state.entry(where).status == RUNNING]
        self.state.reissue.extend(self.state.trials.pop(tid) for tid in lost)
        return lost

    # ---- what the driver may ask ------------------------------------------------------------------

    def study(self, cp: CellPlan) -> optuna.Study:
        """The cell's study in Optuna's storage: each search trial in the state it ended in."""
        self._sync(cp)
        return self._store().study(cp)

    # ---- internals ---------------------------------------------------------------------------------

    def _open_cells(self) -> list[CellPlan]:
        """The cells that may still issue a trial, in the plan's order (plan.issue_order). A cell closes once it
        failed or issued all its final runs; ``suggest`` then no longer looks at it (the whole sweep has 342
        cells, and Tune asks on every free slot). A restore reopens failed cells: the list is rebuilt then."""
        if self._open is None:
            self._open = list(self.plan.cells)
        self._open = [cp for cp in self._open
                      if not (self._cell(cp).failed or len(self._cell(cp).finals) >= len(cp.seeds))]
        return self._open

    def _cell(self, cp: CellPlan) -> CellState:
        return self.state.cells[cp.cell.key]

    def _key(self, where: Where) -> str:
        """The trial key (``search-03``, ``final-s42``) of an entry, as the database names it."""
        if where.phase == SEARCH:
            return f"search-{where.index:02d}"
        return f"final-s{self.state.cells[where.cell].finals[where.index].seed}"

    def _plan(self, key: str) -> CellPlan:
        """The plan of the cell ``key`` (a dict, not a scan of the plan's cells on every completed trial)."""
        if not self._plans:
            self._plans = {cp.cell.key: cp for cp in self.plan.cells}
        return self._plans[key]

    def _issue(self, trial_id: str, spec: TrialSpec) -> dict[str, Any]:
        cp = self._plan(spec.cell.key)
        st = self._cell(cp)
        if spec.phase == SEARCH:
            self._sync(cp)
            entry = SearchEntry(params=spec.params)
            warm = st.warm or []
            if spec.index < len(warm) and warm[spec.index]["params"] == spec.params:
                entry.warm_start_from = warm[spec.index]["from"]
            st.search.append(entry)
        else:
            st.finals.append(FinalEntry(seed=spec.seed))
        self.state.trials[trial_id] = Where(spec.cell.key, spec.phase, spec.index)
        return spec.to_config()

    def _reissue(self, trial_id: str, where: Where) -> dict[str, Any]:
        cp = self._plan(where.cell)
        st = self._cell(cp)
        if where.phase == SEARCH:
            spec = TrialSpec(cp.cell, SEARCH, where.index, cp.seeds[0], dict(st.search[where.index].params), cp.run)
        else:
            spec = TrialSpec(cp.cell, FINAL, where.index, st.finals[where.index].seed, dict(st.chosen.params),
                             cp.run, chosen_val_acc=st.chosen.value)
        self.state.trials[trial_id] = where
        return spec.to_config()

    def _next_final(self, cp: CellPlan) -> TrialSpec | None:
        st = self._cell(cp)
        if st.failed or len(st.search) < cp.n_search or st.search_running():
            return None
        if st.chosen is None:
            scored = [(i, e) for i, e in enumerate(st.search) if e.status in (DONE, PRUNED) and e.value is not None]
            if not scored:
                st.failed = "every search trial failed"
                return None
            full = max(e.epochs for _, e in scored)
            # Selection on val200 only; trials pruned early (ASHA) rank below those that ran every epoch.
            index, best = max(scored, key=lambda ie: (ie[1].epochs == full, ie[1].value, -ie[0]))
            st.chosen = Chosen(index, best.params, best.value)
        if len(st.finals) >= len(cp.seeds):
            return None
        i = len(st.finals)
        return TrialSpec(cp.cell, FINAL, i, cp.seeds[i], dict(st.chosen.params), cp.run,
                         chosen_val_acc=st.chosen.value)

    def _next_search(self, cp: CellPlan) -> TrialSpec:
        index = len(self._cell(cp).search)
        warm = self._warm(cp, index)
        if cp.exhaustive:  # the whole grid, the warm-start configurations first
            grid = [dict(zip(cp.space, v)) for v in itertools.product(*cp.space.values())]
            firsts = [w["params"] for w in warm]
            params = (firsts + [p for p in grid if p not in firsts])[index]
        else:
            params = self._ask(cp, index, warm[index]["params"] if index < len(warm) else None)
        return TrialSpec(cp.cell, SEARCH, index, cp.seeds[0], params, cp.run)

    def _warm(self, cp: CellPlan, index: int) -> list[dict[str, Any]]:
        """The cell's warm-start configurations, fixed in ``state`` when its first search trial is suggested."""
        st = self._cell(cp)
        if st.warm is None:
            st.warm = studies.warm_start(self.plan, cp) if index == 0 else []
        return st.warm

    def _store(self) -> studies.Studies:
        if self._stored is None:
            self._stored = studies.for_plan(self.plan)
        return self._stored

    def _sync(self, cp: CellPlan) -> bool:
        """On a cell's first use by this searcher (new, or restored): its stored study mirrors ``state``."""
        if cp.cell.key in self._synced:
            return False
        self._synced.add(cp.cell.key)
        self._store().mirror(cp, self._cell(cp).search)
        return True

    def _study(self, cp: CellPlan) -> optuna.Study:
        key = cp.cell.key
        if key not in self._studies:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            sampler = optuna.samplers.TPESampler(seed=zlib.crc32(key.encode()))
            study = optuna.create_study(direction="maximize", sampler=sampler)
            # Rebuilt after a restore: every finished search trial, as Optuna would have seen it.
            for i, e in enumerate(self._cell(cp).search):
                if e.status != RUNNING:
                    study.add_trial(frozen(cp, i, e))
            self._studies[key] = study
        return self._studies[key]

    def _ask(self, cp: CellPlan, index: int, warm: dict[str, Any] | None = None) -> dict[str, Any]:
        study = self._study(cp)
        tried = {_point(cp.space, e.params) for e in self._cell(cp).search}
        if warm is not None and _point(cp.space, warm) not in tried:
            study.enqueue_trial(warm)  # a best configuration of an earlier sweep (--warm-start-from)
        trial = study.ask(_dists(cp))
        if _point(cp.space, trial.params) in tried:
            # TPE re-suggested a point of this cell: tell Optuna it failed, take an untried point instead.
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            untried = [dict(zip(cp.space, v)) for v in itertools.product(*cp.space.values())
                       if _point(cp.space, dict(zip(cp.space, v))) not in tried]
            study.enqueue_trial(random.Random(zlib.crc32(f"{cp.cell.key}/{index}".encode())).choice(untried))
            trial = study.ask(_dists(cp))
        trial.set_user_attr(INDEX, index)
        self._asked[(cp.cell.key, index)] = trial
        return dict(trial.params)

    def _tell(self, cp: CellPlan, index: int, entry: SearchEntry) -> None:
        if cp.exhaustive:
            return
        rebuilt = cp.cell.key not in self._studies  # then the study was built with this entry already in it
        study = self._study(cp)
        trial = self._asked.pop((cp.cell.key, index), None)
        if trial is None:
            # Suggested before a restore: the rebuilt study learns it now.
            if not rebuilt:
                study.add_trial(frozen(cp, index, entry))
            return
        for step, value in entry.points():
            trial.report(value, step)
        if entry.status == DONE:
            study.tell(trial, entry.value)
        else:
            study.tell(trial, state=STATES[entry.status])


class Limiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter, except that a trial it no longer counts as live (it errored before a
    restore, and Tune reruns it with ``resume_errored``) still reaches the searcher when it completes: the
    plain limiter drops that event, and the cell would wait for the retried trial for ever."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.live_trials or not self._limit_concurrency:
            return super().on_trial_complete(trial_id, result=result, error=error)
        self.searcher.on_trial_complete(trial_id, result=result, error=error)


class Search(SearchGenerator):
    """Tune's wrapper of a Searcher, except that a restored experiment does not keep its "finished" flag.
    Tune sets it once the searcher said FINISHED (every cell done or failed); kept, a resumed sweep would
    never ask again, and a cell whose failed trials are retried (:meth:`SweepSearcher.restore`) would
    never get its final runs. The searcher says FINISHED again at once when nothing is left."""

    def set_state(self, state: dict) -> None:
        super().set_state({**state, "finished": False})
