"""The embedded default: one work folder holds the MLflow store and the leaderboard (SQLite)."""

from __future__ import annotations

from pathlib import Path


def db_url(workdir: Path, url: str | None = None) -> str:
    return url or f"sqlite:///{workdir.resolve() / 'leaderboard.db'}"


def tracking_uri(workdir: Path, uri: str | None = None) -> str:
    return uri or f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
