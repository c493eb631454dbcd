"""``alorectl leaderboard`` and ``alorectl export``: reading a sweep's results.

Both only read the database (:func:`alorectl.results.store.open_results`
never creates one); ``export`` writes its folder whole or not at all
(:mod:`alorectl.results.export`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from alore.data import SUITES
from alore.errors import UnknownChoiceError
from alorectl import db, defaults
from alorectl.results.leaderboard import build, check_choices, default_backbone
from alorectl.results.plot import check_path as check_plot_path
from alorectl.results.plot import draw
from alorectl.results.render import SIMULATED_LABEL, board_table, plain_csv, print_table
from alorectl.results.store import open_results

from .app import Lazy, console, fail
from .options import DEFAULT_WORKDIR, DbUrl, TrackingUri, Workdir

exporting = Lazy("alorectl.results.export")  # torch and timm: imported when an export runs, not for the leaderboard

FORMATS = ("table", "markdown", "csv", "json")


def leaderboard(
    backbone: Annotated[str | None, typer.Option(
        help="backbone whose leaderboard to show (default: the one with results)")] = None,
    suite: Annotated[str, typer.Option(help="vtab or fgvc")] = "vtab",
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json (csv/json: full precision)")]
    = "table",
    wide: Annotated[bool, typer.Option("--wide", help="a column per task (the table's default: group means)")]
    = False,
    plot: Annotated[Path | None, typer.Option(help="draw mean accuracy vs trainable parameters (paper fig. 1) to PNG")] = None,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,  # accepted like every sweep-facing command; unused here
    db_flag: DbUrl = None,
    simulated: Annotated[bool, typer.Option(
        "--simulated", help="only the results of simulated sweeps (alorectl bench scale), labelled as such")] = False,
) -> None:
    """The paper's table layout: a row per method, group means, all_mean, Params(M), best in green.

    Methods come in the paper's fixed order (not ranked). The table fits 80 columns; --wide adds
    every task, --format csv/json carry every column at full precision.

    Examples:

      alorectl leaderboard

      alorectl leaderboard --backbone vit_b --wide

      alorectl leaderboard --format csv > vit_b.csv
    """
    if fmt not in FORMATS:
        raise UnknownChoiceError("format", fmt, FORMATS)
    if suite not in SUITES:  # typed values first, before the database is even looked for
        raise UnknownChoiceError("suite", suite, SUITES)
    if plot is not None:
        check_plot_path(plot)
    with open_results(workdir, db_flag) as engine:
        backbone = backbone or default_backbone(engine, suite, simulated)
        check_choices(engine, backbone, suite, simulated)
        board = build(engine, backbone, suite, simulated)
    if not board.rows:
        fail(f"no results for backbone {backbone!r} ({suite}) in {db.mask_url(defaults.db_url(workdir, db_flag))}; "
             "run a sweep first: alorectl sweep demo")
    if simulated and fmt != "table":  # the table says it in its title; other formats get a line on stderr
        sys.stderr.write(f"{SIMULATED_LABEL}\n")
    if fmt == "markdown":
        sys.stdout.write(db.to_markdown(board) + "\n")
    elif fmt == "csv":
        sys.stdout.write(plain_csv(board))
    elif fmt == "json":
        sys.stdout.write(db.to_json(board) + "\n")
    else:
        print_table(console, board_table(board, backbone, suite, wide=wide, simulated=simulated))
    if plot is not None:
        written = draw(board, plot, backbone)
        console.print(f"plot written to {written}", highlight=False, markup=False)


def export(
    backbone: Annotated[str, typer.Option(help="backbone of the result")] = "vit_b",
    task: Annotated[str, typer.Option(help="task of the result")] = "cifar",
    method: Annotated[str, typer.Option(help="a method, or 'best' (chosen by val200 accuracy, never by test)")]
    = "alore",
    out: Annotated[Path, typer.Option(help="output folder (new or empty)")] = Path("export"),
    force: Annotated[bool, typer.Option("--force", help="replace an earlier export in a non-empty --out")] = False,
    register: Annotated[bool, typer.Option("--register", help="also register it in MLflow's model registry as "
                                           "alore-<backbone>-<task>, alias 'best' when its val accuracy is the best "
                                           "(use with --method best)")] = False,
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    db_flag: DbUrl = None,
) -> None:
    """Write model.safetensors (merged into plain timm), adapter.safetensors and card.json.

    The card's `load` line works from any folder: plain timm for a merged method, else
    alore.load_export(PATH), which loads every export.

    Examples:

      alorectl export --backbone demo --task digits --method best --out best/

      python -c "import alore; print(alore.load_export('best/'))"
    """
    done = exporting.export_result(workdir, db_flag, tracking_uri, backbone, task, method, out, force, register=register)
    card = done.card
    if done.chosen_by_val:
        val = f"{card['val_acc']:.2f}%" if card["val_acc"] is not None else "-"
        console.print(f"best method for {backbone}/{task} by val200 accuracy: {card['method']} (val {val}, "
                      f"test {card['test_acc']:.2f}%)", highlight=False, markup=False)
    console.print(f"exported {backbone}/{task}/{card['method']} (test {card['test_acc']:.2f}%) to {out}",
                  highlight=False, markup=False)
    how = "load it with plain timm" if card["merged"] else "load it with alore"
    console.print(f"{how}:\n  {card['load']}", highlight=False, markup=False, soft_wrap=True)  # one line to copy
    if card["merged"]:
        console.print(f"or with alore:\n  {card['load_alore']}", highlight=False, markup=False, soft_wrap=True)
    if register:
        reg = exporting.register_result(done, backbone, task, defaults.tracking_uri(workdir, tracking_uri))
        where = f"models:/{reg.name}@best"
        console.print(f"registered {reg.name} version {reg.version}; " +
                      (f"{where} is this model" if reg.moved else f"{where} stays version {reg.best_version} "
                                                                  "(better val accuracy)"), highlight=False, markup=False)
