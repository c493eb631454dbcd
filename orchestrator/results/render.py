"""The leaderboard as a terminal table (``alorectl leaderboard`` and the end of every sweep)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from alorectl import db


SIMULATED_LABEL = "SIMULATED (alorectl bench scale): synthetic accuracies of simulated trials, not results"


def board_table(board: Any, backbone: str, suite: str, simulated: bool = False) -> Table:
    header, rows = db.to_rows(board, mark="[bold green]{}[/]")
    title = f"{backbone} on {suite}: top-1 test accuracy (%), best per column in green"
    table = Table(title=f"{SIMULATED_LABEL}\n{title}" if simulated else title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def print_board(console: Console, engine: Any, backbone: str, suite: str, simulated: bool = False) -> None:
    from .leaderboard import build

    board = build(engine, backbone, suite, simulated)
    if board.rows:
        console.print(board_table(board, backbone, suite, simulated))
