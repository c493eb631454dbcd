"""The leaderboard as text: a terminal table (``alorectl leaderboard`` and the end of every sweep) and the
plain CSV that carries the database's numbers.

The terminal table fits 80 columns by default: the group means, ``all_mean``
(and ``group_mean``) and Params(M) per method, full method names; ``wide``
adds a column per task (19 for VTAB: a wide terminal, or a pager). Suites
without groups (FGVC, 5 tasks) always show their tasks.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from alorectl import db
from alorectl.db.leaderboard import format_value

#: The compact view's columns (the task columns are left to ``wide``).
COMPACT_KINDS = ("group", "all_mean", "group_mean", "params")


SIMULATED_LABEL = "SIMULATED (alorectl bench scale): synthetic accuracies of simulated trials, not results"


def shown_columns(board: db.Leaderboard, wide: bool = False) -> list[db.Column]:
    if wide or not board.group_names:
        return list(board.columns)
    return [c for c in board.columns if c.kind in COMPACT_KINDS]


def board_table(board: db.Leaderboard, backbone: str, suite: str, wide: bool = False,
                simulated: bool = False) -> Table:
    columns = shown_columns(board, wide)
    hidden = len(board.columns) - len(columns)
    caption = f"{hidden} task columns hidden: --wide shows them" if hidden else None
    # No vertical rules: at 80 columns every character goes to a method's full name and the numbers.
    title = f"{backbone} on {suite}: top-1 test accuracy (%), best in green"
    table = Table(title=f"{SIMULATED_LABEL}\n{title}" if simulated else title, caption=caption,
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("Method", justify="left", no_wrap=True, min_width=max(len(r.method) for r in board.rows))
    for col in columns:
        table.add_column(col.label, justify="right", min_width=len(col.label), no_wrap=True)
    for row in board.rows:
        cells = [row.method]
        for col in columns:
            text = format_value(col, board.value(row, col))
            cells.append(f"[bold green]{text}[/]" if board.is_best(row.method, col) else text)
        table.add_row(*cells)
    return table


def plain_csv(board: db.Leaderboard) -> str:
    """Every column, every number at full precision as the database holds it (no rounding, no marks);
    an empty cell where a value is missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["method", *(c.key for c in board.columns)])
    for row in board.rows:
        writer.writerow([row.method, *("" if (v := board.value(row, c)) is None else repr(v) for c in board.columns)])
    return out.getvalue()


def print_table(console: Console, table: Table) -> None:
    """``table`` at its natural width when the terminal is narrower (``--wide``: the terminal or a pager
    wraps the lines; rich would squeeze every column to an ellipsis)."""
    natural = console.measure(table, options=console.options.update_width(100_000)).maximum
    if natural <= console.width:
        console.print(table)
        return
    width = console.width
    console.width = natural  # print(width=) cannot go beyond the console's own width
    try:
        console.print(table, crop=False)
    finally:
        console.width = width


def print_board(console: Console, engine: Any, backbone: str, suite: str, simulated: bool = False) -> None:
    from .leaderboard import build

    board = build(engine, backbone, suite, simulated)
    if board.rows:
        console.print(board_table(board, backbone, suite, simulated=simulated))
