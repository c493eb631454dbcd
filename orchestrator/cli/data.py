"""``alorectl data``: check benchmark folders on disk, write the demo dataset."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .app import App, fail, print_json, split_csv

# App: every command's AloreError becomes one "error: ..." line on stderr and exit 2.
app = App(help="Check VTAB-1k / FGVC folders on disk and write the offline demo dataset.")



@app.command()
def check(
    root: Annotated[Path, typer.Option(
        "--root", help="Benchmark root: <root>/<task>/<split files>.", envvar="ALORE_DATA_ROOT")],
    suite: Annotated[str, typer.Option(
        "--suite", help="Layout: vtab (NOAH txt splits) or fgvc (VPT json splits).")] = "vtab",
    tasks: Annotated[str | None, typer.Option(
        "--tasks", help="Comma-separated task folders to check (default: all found).")] = None,
    decode_all: Annotated[bool, typer.Option(
        "--decode-all", help="Decode every image, not one per split (slow).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON instead of a table.")] = False,
) -> None:
    """Validate every task: split files, labels, split sizes, image files; exit 2 on any problem.

    Examples:

      alorectl data check --root data/vtab-1k

      alorectl data check --root data/fgvc --suite fgvc --tasks cub
    """
    from alore.data import check_root

    names = split_csv(tasks) or None  # "--tasks ''" means all tasks, as omitting it does
    reports = check_root(root, suite, names, decode_all=decode_all)
    if as_json:
        print_json([r.to_dict() for r in reports])
    else:
        _print_reports(reports)
    bad = [r.task for r in reports if not r.ok]
    if bad:  # a problem in the data is the user's to fix, like any other bad input: one line, exit 2
        fail(f"{len(bad)} of {len(reports)} task(s) have problems (listed above): {', '.join(bad)}")


def _print_reports(reports: list) -> None:
    # Piped or captured output gets the table's natural width, not a truncated 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    splits = list(reports[0].sizes) if reports else []
    table = Table(title=f"{reports[0].suite} data" if reports else None, box=box.SIMPLE_HEAD)
    # Names never truncated (they are what the user types); narrow terminals fold the numbers.
    table.add_column("task", no_wrap=True, min_width=max(len(r.task) for r in reports))
    table.add_column("group", no_wrap=True, min_width=max(len(r.group) for r in reports))
    for column in ("classes", *splits):
        table.add_column(column, justify="right", overflow="fold")
    table.add_column("status", no_wrap=True)
    for r in reports:
        sizes = ["-" if r.sizes[s] is None else str(r.sizes[s]) for s in splits]
        status = "[green]ok[/green]" if r.ok else f"[red]{len(r.problems)} problem(s)[/red]"
        table.add_row(r.task, r.group, "-" if r.num_classes is None else str(r.num_classes), *sizes, status)
    console.print(table)
    # Plain lines, never wrapped or parsed as markup: paths must stay copy-pasteable.
    for r in reports:
        for line in r.problems:
            console.print(f"{r.task}: {line}", markup=False, soft_wrap=True)
        for line in r.notes:
            console.print(f"{r.task}: note: {line}", markup=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(
        "--out", help="Folder to write into; the dataset goes to <out>/vtab-1k.")] = Path("work/data"),
) -> None:
    """Write the offline demo dataset (scikit-learn digits in the VTAB-1k layout).

    Examples:

      alorectl data demo --out demo
    """
    from alore.data import DEMO_TASKS, write_demo_dataset
    from alore.demo_backbone import write_demo_weights

    root = write_demo_dataset(out)
    weights = write_demo_weights(out)
    typer.echo(f"demo dataset: {root} (tasks: {', '.join(DEMO_TASKS)})")
    typer.echo(f"demo backbone weights: {weights}")
    typer.echo(f"check it with: alorectl data check --root {root}")
