"""``alorectl``: the root Typer app, composed of sub-apps and commands."""

from __future__ import annotations

from .app import App
from .commands import bench, data, merge_check, params, results, sweep, train, ui
from .commands import analyze

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
    app()


if __name__ == "__main__":
    main()
