"""connect(): URL parsing, one-line errors for unreachable databases, masked credentials."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from alorectl.db import DatabaseUnavailableError, DatabaseURLError, connect, mask_url, parse_db_url
from alorectl.db.urls import mask_text, scrub_secrets
from alorectl.db.writes import record_result, upsert_sweep

SECRET = "s3cr3t-Pa55"


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_is_one_masked_line() -> None:
    port = _closed_port()
    url = f"postgresql+psycopg://alice:{SECRET}@127.0.0.1:{port}/alore"
    with pytest.raises(DatabaseUnavailableError) as info:
        connect(url)
    message = str(info.value)
    assert message.startswith(f"cannot reach database postgresql+psycopg://alice:***@127.0.0.1:{port}/alore: ")
    assert "refused" in message.lower()
    assert SECRET not in message
    assert "\n" not in message


@pytest.mark.postgresql
def test_wrong_password_is_one_masked_line(postgres_url: str) -> None:
    url = make_url(postgres_url).set(password=SECRET).render_as_string(hide_password=False)
    with pytest.raises(DatabaseUnavailableError, match="password authentication failed") as info:
        connect(url)
    assert SECRET not in str(info.value) and "\n" not in str(info.value)


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a database, " * 100)
    with pytest.raises(DatabaseUnavailableError, match="file is not a database"):
        connect(f"sqlite:///{bogus}")


def test_sqlite_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailableError, match="cannot create folder"):
        connect(f"sqlite:///{blocker / 'sub' / 'alore.db'}")


def test_sqlite_parent_folders_are_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "alore.db"
    connect(f"sqlite:///{path}").dispose()
    assert path.is_file()


def test_bare_path_is_an_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "w" / "alore.db"
    assert parse_db_url(str(path)).drivername == "sqlite"
    connect(str(path)).dispose()
    assert path.is_file()


def test_in_memory_sqlite_keeps_its_schema() -> None:
    eng = connect("sqlite://")
    upsert_sweep(eng, "mem")
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sweep")).scalar_one() == 1
    eng.dispose()


@pytest.mark.parametrize("given", ["postgresql://u:p@h/db", "postgres://u:p@h/db"])
def test_plain_postgresql_urls_use_psycopg3(given: str) -> None:
    assert parse_db_url(given).drivername == "postgresql+psycopg"


@pytest.mark.parametrize(
    ("given", "match"),
    [
        ("mysql://root:" + SECRET + "@db/alore", "unsupported database backend 'mysql'.*valid choices"),
        ("   ", "empty database URL"),
        ("postgresql+psycopg://alice:" + SECRET + "@host:notaport/db", "malformed database URL"),
    ],
)
def test_bad_urls(given: str, match: str) -> None:
    with pytest.raises(DatabaseURLError, match=match) as info:
        connect(given)
    assert SECRET not in str(info.value)


def test_mask_url() -> None:
    assert mask_url(f"postgresql+psycopg://alice:{SECRET}@db:5432/alore") == (
        "postgresql+psycopg://alice:***@db:5432/alore"
    )
    assert mask_url("sqlite:///work/alore.db") == "sqlite:///work/alore.db"
    assert mask_text(f"tracking http://bob:{SECRET}@mlflow:5000 and s3://k:{SECRET}@b/x") == (
        "tracking http://bob:***@mlflow:5000 and s3://k:***@b/x"
    )
    # A raw "@" inside the password (not percent-encoded) is masked whole, not up to its first "@".
    raw = "cannot reach postgresql+psycopg://user:pa@ss@127.0.0.1:1/db"
    assert mask_text(raw) == "cannot reach postgresql+psycopg://user:***@127.0.0.1:1/db"
    assert mask_url("postgresql+psycopg://user:pa@ss@127.0.0.1:1/db").count("ss") == 0


def test_scrub_secrets_walks_json() -> None:
    config = {"db": f"postgresql://a:{SECRET}@h/d", "nested": [{"uri": f"http://u:{SECRET}@x"}], "lr": 1e-3}
    scrubbed = scrub_secrets(config)
    assert SECRET not in repr(scrubbed)
    assert scrubbed["lr"] == 1e-3
    assert config["db"].endswith("@h/d") and SECRET in config["db"]  # the input is not modified


def test_credentials_are_masked_in_the_database(engine: Engine) -> None:
    config = {"db": f"postgresql+psycopg://alice:{SECRET}@db/alore", "tracking_uri": f"http://u:{SECRET}@mlflow"}
    sweep_id = upsert_sweep(engine, "s", config=config)
    record_result(
        engine, sweep_id=sweep_id, backbone="vit_b", task="cifar", method="alore", suite="vtab",
        test_acc_mean=70.0, seeds=[0], config=config, artifact_uri=f"s3://key:{SECRET}@bucket/run",
    )  # fmt: skip
    with engine.connect() as conn:
        dump = [conn.execute(text(f"SELECT * FROM {t}")).all() for t in ("sweep", "result")]
    assert SECRET not in repr(dump)
    assert "alice:***@db" in repr(dump)


@pytest.mark.postgresql
def test_credentials_are_masked_in_logs(scratch_postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        connect(scratch_postgres_url).dispose()
    password = make_url(scratch_postgres_url).password
    assert password
    assert "ready" in caplog.text
    assert password not in caplog.text
