"""Pictures of a cell's search from its Optuna study: parameter importance and parallel coordinates.

Drawn with ``optuna.visualization.matplotlib`` (PNG; plotly, which Optuna's HTML
plots need, is not a dependency). The sweep logs them to the cell's MLflow run
(``search/``) when the cell's search ends with at least :data:`MIN_TRIALS`
complete trials; ``alorectl analyze search`` draws the same files.
"""

from __future__ import annotations

import warnings
from pathlib import Path

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
