"""Mean accuracy against trainable parameters (the paper's figure 1), as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

from alore.errors import ConfigError, UnknownChoiceError
from alorectl import db

SUFFIXES = (".pdf", ".png", ".svg")


def check_path(path: Path) -> None:
    """``--plot`` names a new or existing file of a format we draw, in a folder we can write (checked before
    the database is opened)."""
    if path.suffix.lower() not in SUFFIXES:
        raise UnknownChoiceError("--plot file type", path.suffix or path.name, SUFFIXES)
    if path.is_dir():
        raise ConfigError(f"--plot {path} is a folder; pass a file, e.g. {path / 'leaderboard.png'}")
    folder = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--plot {path}: cannot write there ({folder} is not a folder you can write); "
                          "pass a writable FILE.png")


def draw(board: db.Leaderboard, path: Path, backbone: str) -> Path:
    """Draw ``board``'s methods (x: Params(M), y: all_mean) to ``path``; the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in db.to_records(board):
        x, y = r.get("params_m"), r.get("all_mean")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60, marker="*" if r["method"].startswith("alore") else "o")
        ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("trainable parameters (M)")
    ax.set_ylabel("mean top-1 accuracy (%)")
    ax.set_title(f"Accuracy vs parameters, {backbone}")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as err:
        raise ConfigError(f"cannot write the plot to {path}: {err.strerror or err}; pass --plot a writable "
                          "FILE.png") from None
    finally:
        plt.close(fig)
    return path
