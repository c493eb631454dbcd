"""Shared test set-up: nothing may reach the network, everything is small and seeded."""

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

# Set before timm/huggingface_hub are imported: a test that tried to download fails at once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory):
    """The demo dataset and pre-trained demo backbone, made once per test session (no network)."""
    from alore.data import write_demo_dataset
    from alore.demo_backbone import write_demo_weights

    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out)
    write_demo_weights(out)
    return out


# Markers (registered in pyproject.toml) follow from what a test uses, so `make check` (the fast lane) needs
# no list kept by hand: a test that asks for the PostgreSQL server or the browser is marked as such.
FIXTURE_MARKS = {"postgres_url": "postgresql", "scratch_postgres_url": "postgresql", "browser": "browser"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in FIXTURE_MARKS:
                item.add_marker(FIXTURE_MARKS[fixture])


# PostgreSQL comes from ALORE_TEST_POSTGRES_URL (`.ci/postgres.sh` starts a server and prints it); each test
# gets a scratch database of its own, dropped afterwards. Without the variable the PostgreSQL cases are
# skipped locally, but under CI (env CI set) they fail: CI must not pass by silently skipping them.
PG_ENV = "ALORE_TEST_POSTGRES_URL"


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
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

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


# ---- the headless browser (tests/test_ui_browser.py, tests/test_sweep.py) ----

def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"the browser test cannot be skipped under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium driven by Debian's chromedriver (nothing downloaded)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        _unavailable("chromium/chromedriver not found; install them: apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed; pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
