"""The sweep searcher's state, typed: one :class:`CellState` per cell and where each Tune trial belongs.

Tune saves it in the experiment checkpoint (:meth:`SweepSearcher.save`) as JSON, and the Optuna studies are
rebuilt from it on restore (:mod:`alorectl.sweep.studies`), so it holds plain values only: a search trial's
configuration, how it ended, its per-epoch val200 curve; a final run's seed and how it ended; the
configuration chosen on val200. :meth:`SearcherState.from_json` also reads the untyped dictionaries an
earlier version saved, so a sweep started before this module can still be resumed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

RUNNING, DONE, PRUNED, FAILED = "running", "done", "pruned", "failed"


@dataclasses.dataclass
class SearchEntry:
    """Search trial ``i`` of a cell (train800 → val200)."""

    params: dict[str, Any]
    status: str = RUNNING            # running | done | pruned (stopped early by ASHA) | failed
    value: float | None = None       # its last val200 accuracy
    epochs: int = 0                  # epochs it ran
    error: bool = False              # it errored (not just reported no score): a restore retries it
    curve: dict[str, float] = dataclasses.field(default_factory=dict)  # epoch -> val200 (str keys: JSON's)
    warm_start_from: str | None = None  # the earlier sweep's study this configuration came from

    def points(self) -> list[tuple[int, float]]:
        """The val200 curve as (epoch, accuracy), in epoch order."""
        return sorted((int(step), value) for step, value in self.curve.items())


@dataclasses.dataclass
class FinalEntry:
    """A final run of a cell (train800val200 → test), one per seed."""

    seed: int
    status: str = RUNNING
    error: bool = False


@dataclasses.dataclass
class Chosen:
    """The cell's configuration for its final runs: the best search trial on val200."""

    index: int
    params: dict[str, Any]
    value: float


@dataclasses.dataclass
class CellState:
    search: list[SearchEntry] = dataclasses.field(default_factory=list)
    finals: list[FinalEntry] = dataclasses.field(default_factory=list)
    chosen: Chosen | None = None
    failed: str | None = None                # why the cell failed; None while it may still finish
    warm: list[dict[str, Any]] | None = None  # warm-start configurations ({"params", "from"}), fixed at first use

    def entries(self, phase: str) -> list[SearchEntry] | list[FinalEntry]:
        return self.search if phase == "search" else self.finals

    def search_running(self) -> bool:
        return any(e.status == RUNNING for e in self.search)


@dataclasses.dataclass(frozen=True)
class Where:
    """Which entry a Tune trial is: its cell's key, its phase (search/final) and its index there."""

    cell: str
    phase: str
    index: int


@dataclasses.dataclass
class SearcherState:
    cells: dict[str, CellState]
    trials: dict[str, Where] = dataclasses.field(default_factory=dict)  # Tune trial id -> its entry
    reissue: list[Where] = dataclasses.field(default_factory=list)      # lost in a driver kill: suggested again

    @classmethod
    def new(cls, cell_keys: list[str]) -> SearcherState:
        return cls({key: CellState() for key in cell_keys})

    def entry(self, where: Where) -> SearchEntry | FinalEntry:
        return self.cells[where.cell].entries(where.phase)[where.index]

    def to_json(self) -> dict[str, Any]:
        return {"cells": {k: dataclasses.asdict(c) for k, c in self.cells.items()},
                "trials": {t: [w.cell, w.phase, w.index] for t, w in self.trials.items()},
                "reissue": [[w.cell, w.phase, w.index] for w in self.reissue]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearcherState:
        cells = {}
        for key, c in data["cells"].items():
            search = [SearchEntry(params=e["params"], status=e["status"], value=e.get("value"),
                                  epochs=int(e.get("epochs", 0)),
                                  error=bool(e.get("error", e["status"] == FAILED)),
                                  curve=dict(e.get("curve") or {}), warm_start_from=e.get("warm_start_from"))
                      for e in c.get("search", [])]
            finals = [FinalEntry(seed=int(e["seed"]), status=e["status"],
                                 error=bool(e.get("error", e["status"] == FAILED))) for e in c.get("finals", [])]
            chosen = c.get("chosen")
            cells[key] = CellState(search, finals, Chosen(int(chosen["index"]), chosen["params"], chosen["value"])
                                   if chosen else None, c.get("failed"), c.get("warm"))
        return cls(cells, {t: Where(*w) for t, w in data.get("trials", {}).items()},
                   [Where(*w) for w in data.get("reissue", [])])
