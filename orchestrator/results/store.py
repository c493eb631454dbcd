"""The results database as the reading commands open it: read-only, never created, closed after use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine

from alore.errors import AloreError
from alorectl import db, defaults


@contextmanager
def open_results(workdir: Path, db_flag: str | None,
                 remedy: str = "run one first: alorectl sweep demo") -> Iterator[Engine]:
    """The results database, read-only; a work folder where no sweep ran is one clear line (ending in
    ``remedy``), not a new file. Closed on the way out: an open SQLite connection keeps its ``-wal``/``-shm``
    files next to the database."""
    url = defaults.db_url(workdir, db_flag)
    try:
        engine = db.open_existing(url)
    except db.DatabaseNotFoundError:
        where = f"this workdir ({workdir.resolve()})" if db_flag is None else f"the database {db.mask_url(url)}"
        raise AloreError(f"no sweep has run in {where}; {remedy}") from None
    try:
        yield engine
    finally:
        engine.dispose()
