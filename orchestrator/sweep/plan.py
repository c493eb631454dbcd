"""Plan: preset → cells → trial specs. Pure code (no Ray, no database, no MLflow).

A sweep is a list of cells (backbone × task × method). Each cell searches its
method's grid on the ``search`` protocol (train800 → val200) and then retrains
the configuration with the best val200 accuracy on the ``final`` protocol
(train800val200 → test), once per seed. The plan fixes, per cell, the search
space (only the hyper-parameters the method uses), how many search trials it
gets (the exhaustive grid when the budget covers it), its seeds and its relative
cost, and the order in which cells are issued (:func:`issue_order`): the
backbones advance together between a head and a tail that go costliest
first, so that every worker starts on a long trial and no ViT-H cell is the
long tail.

A :class:`TrialSpec` is everything one trial needs. It crosses the layers as a
typed record and reaches the trial through Tune's config by :meth:`to_config` /
:meth:`from_config`, the one encoder/decoder of the trial config.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
from pathlib import Path
from typing import Any

from . import preset as presets

SEARCH, FINAL = "search", "final"
SHORT = {"lr": "lr", "weight_decay": "wd", "dropout": "do"}  # run names: "search 3 · lr=0.01 wd=0.001 do=0.1"


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    backbone: str
    task: str
    method: str

    @property
    def key(self) -> str:
        return f"{self.backbone}__{self.task}__{self.method}"

    @property
    def label(self) -> str:
        """Readable, distinguishing part first (MLflow run names truncate from the right)."""
        return f"{self.method} · {self.task}"

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every trial of a cell shares (TrainConfig fields that are not searched)."""

    suite: str
    data_root: str
    weights: str | None
    epochs: int
    warmup_epochs: int
    batch_size: int


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """One trial: a search point of a cell, or the chosen point retrained with one seed."""

    cell: Cell
    phase: str                      # SEARCH or FINAL
    index: int                      # search: 0, 1, ...; final: position of the seed
    seed: int
    params: dict[str, Any]          # the method's searched hyper-parameters (flat)
    run: RunSettings
    chosen_val_acc: float | None = None  # final trials: val200 accuracy of the search trial they retrain

    @property
    def key(self) -> str:
        """The trial's name within its cell (database ``trial_key``, MLflow key, Tune folder suffix)."""
        return f"search-{self.index:02d}" if self.phase == SEARCH else f"final-s{self.seed}"

    @property
    def dirname(self) -> str:
        return f"{self.cell.key}__{self.key}"

    @property
    def run_name(self) -> str:
        if self.phase == FINAL:
            return f"final · seed {self.seed}"
        return f"search {self.index} · " + " ".join(f"{SHORT.get(k, k)}={v}" for k, v in self.params.items())

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`alore.train.TrainConfig`."""
        shared = {k: v for k, v in self.params.items() if k in presets.SHARED_SPACE}
        options = {k: v for k, v in self.params.items() if k not in presets.SHARED_SPACE}
        return {"backbone": self.cell.backbone, "task": self.cell.task, "method": self.cell.method,
                **dataclasses.asdict(self.run), "protocol": self.phase, "seed": self.seed,
                "method_options": options, **shared}

    def to_config(self) -> dict[str, Any]:
        """Tune's trial config (JSON-ready)."""
        data = dataclasses.asdict(self)
        return {"spec": data}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrialSpec:
        data = dict(config["spec"])
        return cls(cell=Cell(**data.pop("cell")), run=RunSettings(**data.pop("run")), **data)


@dataclasses.dataclass(frozen=True)
class CellPlan:
    cell: Cell
    space: dict[str, list]          # hyper-parameter -> grid values (only what the method uses)
    n_search: int                   # search trials
    exhaustive: bool                # True: the search is the whole grid, in order
    seeds: tuple[int, ...]
    run: RunSettings
    cost: float                     # one trial, in ViT-B trial units

    @property
    def n_trials(self) -> int:
        return self.n_search + len(self.seeds)

    @property
    def grid_size(self) -> int:
        return presets.grid_size(self.space)


@dataclasses.dataclass(frozen=True)
class SweepPlan:
    name: str
    algorithm: str
    scheduler: str
    cells: tuple[CellPlan, ...]     # in the order they are issued (see issue_order)

    @property
    def total_trials(self) -> int:
        return sum(c.n_trials for c in self.cells)

    def cell(self, cell: Cell) -> CellPlan:
        """The plan of ``cell`` (KeyError if the sweep has no such cell); a dict, not a scan: the driver
        asks for every trial that ends (5,814 in the paper's sweep, 342 cells)."""
        return self._by_cell[cell]

    @functools.cached_property
    def _by_cell(self) -> dict[Cell, CellPlan]:
        return {cp.cell: cp for cp in self.cells}


def searched_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched hyper-parameters of a stored run config (everything that is not a run setting)."""
    settings = {f.name for f in dataclasses.fields(RunSettings)}
    return {k: v for k, v in config.items() if k not in settings}


def recorded_spec(plan: SweepPlan, cell: Cell, trial_key: str, seed: int | None,
                  params: dict[str, Any]) -> TrialSpec | None:
    """The spec of a trial recorded in the database (to finish or log it after a restart); None if the trial
    is not part of ``plan``."""
    try:
        cp = plan.cell(cell)
    except KeyError:
        return None
    if trial_key.startswith("search-"):
        return TrialSpec(cell, SEARCH, int(trial_key.removeprefix("search-")), cp.seeds[0], dict(params), cp.run)
    if seed not in cp.seeds:
        return None
    return TrialSpec(cell, FINAL, cp.seeds.index(seed), seed, dict(params), cp.run)


def cells(preset: presets.Preset) -> list[Cell]:
    return [Cell(b, t, m) for b in preset.backbones for t in preset.tasks for m in preset.methods]


def build(preset: presets.Preset, name: str, data_root: Path | str, weights: dict[str, str | None],
          cost: Any = None) -> SweepPlan:
    """The sweep's plan. ``cost(backbone)`` gives a trial's relative cost (default: forward FLOPs)."""
    if cost is None:
        from .costs import relative_cost as cost
    costs = {b: cost(b) for b in preset.backbones}
    planned = []
    for c in cells(preset):
        space = presets.method_space(preset, c.method)
        grid = presets.grid_size(space)
        exhaustive = preset.algorithm == "grid" or preset.trials >= grid
        run = RunSettings(suite=preset.suite, data_root=str(data_root), weights=weights.get(c.backbone),
                          epochs=preset.epochs, warmup_epochs=presets.effective_warmup(preset),
                          batch_size=preset.batch_size)
        planned.append(CellPlan(c, space, grid if exhaustive else preset.trials, exhaustive, tuple(preset.seeds),
                                run, costs[c.backbone]))
    return SweepPlan(name, preset.algorithm, preset.scheduler, tuple(issue_order(planned)))


HEAD_SHARE = 0.08  # the first share of a sweep's work, issued costliest first
TAIL_SHARE = 0.08  # the last share, issued costliest first


def issue_order(cells: list[CellPlan]) -> list[CellPlan]:
    """The order in which the searcher issues cells: the first :data:`HEAD_SHARE` of the work costliest first,
    then each cost class (a backbone) advancing by its share of what is left, and the last :data:`TAIL_SHARE`
    costliest first again.

    Why not costliest first throughout (the classic rule for a short tail): the cheap cells would all come
    last, and a slot asks the driver for a new trial once per trial. In the paper's sweep (vit_b,vit_l,vit_h)
    on 64 slots the ViT-B third (1,938 trials) would end the sweep at 32 trial starts per second in its
    busiest 10 s, against 6-7 in the median 10 s, and each start costs the driver the searcher, a database row
    and an MLflow run. Issued in step, the busiest 10 s hold 16 starts per second and the estimated makespan
    is the same (``estimate_makespan``: 853 s for 2-s ViT-B trials); every backbone also has results early.

    Why a costliest head: every slot's worker process starts while long trials run. Ray Tune hands the worker
    of an ended trial to a pending trial whose own worker is still starting, and cancels that start; with
    short trials from the first minute the starts kept being cancelled (a whole-sweep bench: 41 of 64 slots
    training, for minutes). The preset's order is kept among cells of one cost (a single-backbone sweep keeps
    it entirely)."""
    rest = sorted(cells, key=lambda p: -p.cost)  # costliest first; the preset's order among equals (stable)
    whole = sum(cp.cost * cp.n_trials for cp in rest)
    order: list[CellPlan] = []
    issued = 0.0
    while rest and issued < HEAD_SHARE * whole:
        order.append(rest.pop(0))
        issued += order[-1].cost * order[-1].n_trials
    groups: dict[float, list[CellPlan]] = {}
    for cp in rest:
        groups.setdefault(cp.cost, []).append(cp)
    share = {cost: sum(cp.cost * cp.n_trials for cp in group) for cost, group in groups.items()}
    done = dict.fromkeys(groups, 0.0)
    while whole - issued > TAIL_SHARE * whole and any(groups.values()):
        cost = min((c for c, g in groups.items() if g), key=lambda c: (done[c] / share[c], -c))
        order.append(groups[cost].pop(0))
        done[cost] += order[-1].cost * order[-1].n_trials
        issued += order[-1].cost * order[-1].n_trials
    return order + sorted((cp for g in groups.values() for cp in g), key=lambda p: -p.cost)


def estimate_makespan(plan: SweepPlan, slots: int) -> float:
    """Makespan in ViT-B trial units on ``slots`` trial slots, as the run layer schedules: cells in the plan's
    order, a cell's final runs as soon as its search ends (list scheduling)."""
    if slots < 1:
        raise ValueError("slots must be >= 1")
    free = [0.0] * slots                      # when each slot is free again
    heapq.heapify(free)
    ready: list[tuple[float, int, float, int]] = []  # (ready time, order, cost, count) of pending work
    order = 0
    for cp in plan.cells:                     # search trials of every cell are ready at once
        for _ in range(cp.n_search):
            ready.append((0.0, order, cp.cost, id(cp)))
            order += 1
    search_left = {id(cp): cp.n_search for cp in plan.cells}
    search_end = {id(cp): 0.0 for cp in plan.cells}
    by_id = {id(cp): cp for cp in plan.cells}
    end = 0.0
    queue = sorted(ready)
    finals: list[tuple[float, int, float]] = []
    while queue or finals:
        slot = heapq.heappop(free)
        # Finals that are ready by the time this slot is free come first (the cell's critical path).
        finals.sort()
        if finals and (not queue or finals[0][0] <= slot):
            t_ready, _, c = finals.pop(0)
            start = max(slot, t_ready)
            done = start + c
        else:
            _, _, c, cid = queue.pop(0)
            start = slot
            done = start + c
            search_left[cid] -= 1
            search_end[cid] = max(search_end[cid], done)
            if search_left[cid] == 0:
                cp = by_id[cid]
                for _ in cp.seeds:
                    finals.append((search_end[cid], order, cp.cost))
                    order += 1
        end = max(end, done)
        heapq.heappush(free, done)
    return end
