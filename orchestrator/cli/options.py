"""Options every sweep-facing command shares, with the same embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alorectl.defaults import db_url, tracking_uri  # noqa: F401  (the commands' shared defaults)

Workdir = Annotated[Path, typer.Option(help="work folder: Ray storage, MLflow store, leaderboard, artifacts",
                                       envvar="ALORE_WORKDIR")]
TrackingUri = Annotated[str | None, typer.Option(
    "--tracking-uri", help="MLflow tracking URI (default sqlite:///<workdir>/mlflow.db)", envvar="MLFLOW_TRACKING_URI")]
DbUrl = Annotated[str | None, typer.Option(
    "--db", help="leaderboard database URL (default sqlite:///<workdir>/leaderboard.db; "
                 "postgresql+psycopg://user:pass@host/db on a cluster)", envvar="ALORE_DB")]
Address = Annotated[str | None, typer.Option(help="Ray cluster address (default: a local Ray instance)",
                                             envvar="RAY_ADDRESS")]
DEFAULT_WORKDIR = Path("work")

