"""Fixtures of the db/ suite: every test that takes ``db_url`` runs on SQLite
and on PostgreSQL.

PostgreSQL comes from ``ALORE_TEST_POSTGRES_URL`` (``.ci/postgres.sh`` starts a
server and prints it); each test gets a scratch database of its own, dropped
afterwards, so tests start empty and can run in any order.  Without the
variable the PostgreSQL cases are skipped locally, but under CI (env ``CI``
set) they fail: CI must not pass by silently skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from db import connect

PG_ENV = "ALORE_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs the PostgreSQL server of ALORE_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The server's URL (skip locally / fail under CI when unset)."""
    url = os.environ.get(PG_ENV)
    if not url:
        message = f'{PG_ENV} is not set; run: eval "$(.ci/postgres.sh)"'
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests cannot be skipped under CI: {message}", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture
def scratch_postgres_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server (the test role may CREATEDB)."""
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"alore_t_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
