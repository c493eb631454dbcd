"""``alorectl``: the root Typer app, composed of sub-apps and commands."""

from __future__ import annotations

import sys

from alorectl.db.urls import mask_text

from .app import App, err_console
from . import analyze, bench, data, merge_check, params, results, sweep, train, ui

app = App(name="alorectl", help="ALoRE and baseline PETL methods on timm backbones: train, sweep, rank, export.")
app.command("params")(params.params)
app.command("check-merge")(merge_check.check_merge)
app.command("train")(train.train)
app.command("leaderboard")(results.leaderboard)
app.command("export")(results.export)
app.command("ui")(ui.ui)
app.add_typer(sweep.app, name="sweep")
app.add_typer(bench.app, name="bench")
app.add_typer(data.app, name="data")
app.add_typer(analyze.app, name="analyze")


def main() -> None:
    if any(mask_text(arg) != arg for arg in sys.argv[1:]):
        # As MySQL's client does: what was typed is already in /proc/<pid>/cmdline for every local user.
        err_console.print("[yellow]warning:[/] a password on the command line can be seen by every user of this "
                          "machine (ps); pass it through ALORE_DB or MLFLOW_TRACKING_URI instead", highlight=False)
    app()

