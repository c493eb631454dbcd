"""Mean accuracy against trainable parameters (the paper's figure 1), as a PNG."""

from __future__ import annotations

from pathlib import Path

from alorectl import db


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
