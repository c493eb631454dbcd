"""Pictures of a cell's search from its Optuna study: parameter importance and parallel coordinates.

Drawn with ``optuna.visualization.matplotlib`` (PNG; plotly, which Optuna's HTML
plots need, is not a dependency). The sweep logs them to the cell's MLflow run
(``search/``) when the cell's search ends with at least :data:`MIN_TRIALS`
complete trials, in a process of its own (:class:`Drawer`); ``alorectl analyze
search`` draws the same files.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import optuna

MIN_TRIALS = 3
TARGET = "val200 accuracy (%)"
FILES = ("param_importances.png", "parallel_coordinate.png")


def complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def draw(study: optuna.Study, out: Path) -> list[Path]:
    """Write the study's pictures into ``out``; [] when it has fewer than :data:`MIN_TRIALS` complete trials.
    Parameter importance needs a parameter with more than one value; without one only the parallel
    coordinates are drawn."""
    if complete(study) < MIN_TRIALS:
        return []
    import matplotlib

    matplotlib.use("Agg")  # files only; the sweep draws on a background thread
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    title = study.study_name
    written: list[Path] = []
    plots = {"parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(study, target_name=TARGET)}
    varied = {k for t in study.get_trials(deepcopy=False) for k, d in t.distributions.items()
              if not d.single()}
    if varied:
        plots["param_importances.png"] = lambda: ovm.plot_param_importances(study, target_name=TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # a one-value parameter: matplotlib widens its axis
        for name in FILES:
            if name not in plots:
                continue
            ax = plots[name]()
            ax.figure.suptitle(title, fontsize=9)
            ax.figure.set_size_inches(8, 5)
            ax.figure.savefig(out / name, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(out / name)
    return written


_JOURNALS: dict[Path, Any] = {}  # in the drawing process: the work folder's journal, read on from where it was


def draw_cell(workdir: Path, sweep: str, backbone: str, task: str, method: str, out: Path) -> list[Path]:
    """Runs in the drawing process: the cell's study, from the work folder's journal, drawn into ``out``. The
    storage is kept between cells, so each reads only what the journal gained since (it holds every study of
    the sweep: 5,814 trials in the paper's)."""
    from alorectl.sweep import studies

    storage = _JOURNALS.get(workdir) or studies.open_journal(workdir, create=False)
    if storage is None:
        return []
    _JOURNALS[workdir] = storage
    return draw(studies.load(storage, sweep, backbone, task, method), out)


NICENESS = 10  # the drawing process's: pictures wait while the driver and the trials need the CPU


def _yield_cpu() -> None:
    """A lower priority, not Linux's idle class: a sweep whose trials train on every CPU core (a laptop's) would
    leave an idle-class process no time at all, and its cells' results would reach MLflow only at the end."""
    os.nice(NICENESS)


@dataclasses.dataclass
class Drawing:
    """A cell's pictures being drawn into ``out`` (:meth:`Drawer.start`)."""

    future: Future
    pool: ProcessPoolExecutor
    out: Path


class Drawer:
    """Draws cells' pictures in a process of its own, started on first use. Matplotlib and the parameter
    importance (a random forest) take 0.2-1 s of CPU a cell, holding the GIL: on the driver's tracking
    thread they took the time that Ray Tune's event loop, on the main thread, needed (40% of that thread in
    the ViT-B phase of the paper's whole sweep on 64 slots, ``alorectl bench scale``).

    The sweep starts a cell's drawing as soon as its search ends (:meth:`start`, from Tune's loop), and logs
    the cell's result once the drawing is done (the trials' runs are logged meanwhile). The
    process runs at a lower priority (:func:`_yield_cpu`): where the driver and the trials need every core,
    they come first."""

    def __init__(self) -> None:
        self.pool: ProcessPoolExecutor | None = None
        self.lock = threading.Lock()  # started from one thread, waited for on another

    def start(self, workdir: Path, sweep: str, backbone: str, task: str, method: str, out: Path) -> Drawing:
        with self.lock:
            if self.pool is None:  # spawn: a fresh interpreter, not a fork of a driver that runs Ray's threads
                self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_yield_cpu)
            pool = self.pool
        try:
            return Drawing(pool.submit(draw_cell, workdir, sweep, backbone, task, method, out), pool, out)
        except BrokenProcessPool:
            self._lost(pool)
            raise

    def wait(self, drawing: Drawing) -> list[Path]:
        try:
            return drawing.future.result()
        except BrokenProcessPool:
            self._lost(drawing.pool)
            raise

    def draw(self, workdir: Path, sweep: str, backbone: str, task: str, method: str, out: Path) -> list[Path]:
        return self.wait(self.start(workdir, sweep, backbone, task, method, out))

    def _lost(self, pool: ProcessPoolExecutor) -> None:
        with self.lock:
            if self.pool is pool:
                self.pool = None  # the next drawing starts a new process

    def close(self) -> None:
        with self.lock:
            pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown()
