"""Fixtures of the db/ suite: every test that takes ``db_url`` runs on SQLite
and on PostgreSQL.

PostgreSQL comes from the ``scratch_postgres_url`` fixture of ``tests/conftest.py``
(a scratch database per test; skipped locally without a server, failing under CI).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from alorectl.db import connect

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """An empty database: an SQLite file in a folder that does not exist yet, or PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'alore.db'}"
    return request.getfixturevalue("scratch_postgres_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """``connect(db_url)``: the schema upgraded to head."""
    eng = connect(db_url)
    yield eng
    eng.dispose()
