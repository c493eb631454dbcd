"""``alorectl ui`` and the leaderboard experiment, opened in a real headless Chromium.

A store written by the sweep's own code (tests/ui_utils.py), the UI started
through ``alorectl ui`` with ``$BROWSER`` set to a recorder: the command must
open the leaderboard's ranked table by itself (MLflow 3 opens its root and every
experiment on its GenAI pages, with no server setting against it), and that
page must be the runs table, one row per method ranked by ``all_mean``, every
column visible without touching "Columns", in the benchmark's order, rounded to
2 decimals. A person who opens the server's root instead reaches the same table
through the experiment and the link its description starts with.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (``.ci/run`` installs the first two, the ``test`` extra the last):
without them the test is skipped locally and fails under CI (env ``CI`` set).
``ALORE_UI_SHOTS=<folder>`` keeps a screenshot of the page there.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from ui_utils import METHODS, OFFSETS, TASKS, make_board, make_leaderboard_store, running_ui

from alorectl.tracking.board import metric_names
from alorectl.tracking.links import VIEW_ID, experiment_url, metric_column
from alorectl.tracking.observer import leaderboard_name

RUN_NAME_COLUMN = "attributes.`Run Name`"
RENDER_TIMEOUT_S = 45
WIDE = (3200, 1000)  # every column rendered: ag-grid draws only the columns in view


def read_rows(driver: Any, url: str | None, metric: str, rows: int) -> list[dict[str, str]]:
    """Open ``url`` (None: the page already open) and wait for the runs table; per row, top to bottom, its
    cells by column id (``metrics.`all_mean```...). Fails if the ``metric`` column is not shown. ag-grid
    splits a row between its pinned and scrolling parts, so cells are joined by their ``row-index``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    if url is not None:
        driver.get(url)
    wait = WebDriverWait(driver, RENDER_TIMEOUT_S)
    header = f"[role=columnheader][col-id='{metric_column(metric)}']"
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, header)))

    def table(d: Any) -> list[dict[str, str]] | None:
        cells: dict[int, dict[str, str]] = {}
        for cell in d.find_elements(By.CSS_SELECTOR, "[role=row][row-index] [role=gridcell][col-id]"):
            row = cell.find_element(By.XPATH, "./ancestor::*[@row-index][1]").get_attribute("row-index")
            links = cell.find_elements(By.TAG_NAME, "a")  # the run name is a link; its cell also holds a colour chip
            cells.setdefault(int(row), {})[cell.get_attribute("col-id")] = (links[0] if links else cell).text.strip()
        found = [c for _, c in sorted(cells.items())]
        complete = all(c.get(RUN_NAME_COLUMN) and c.get(metric_column(metric)) for c in found)
        return found if len(found) == rows and complete else None

    return wait.until(table)


def read_runs_table(driver: Any, url: str, metric: str, rows: int) -> list[tuple[str, str]]:
    """(run name, ``metric`` cell) per row of the runs table at ``url``, top to bottom."""
    return [(c[RUN_NAME_COLUMN], c[metric_column(metric)]) for c in read_rows(driver, url, metric, rows)]


def metric_headers(driver: Any) -> list[str]:
    """The metric columns' ids, left to right as shown."""
    from selenium.webdriver.common.by import By

    ids = [h.get_attribute("col-id") for h in driver.find_elements(By.CSS_SELECTOR, "[role=columnheader][col-id]")]
    return [i for i in ids if i and i.startswith("metrics.`")]


def test_alorectl_ui_opens_the_ranked_table_in_the_browser(browser: Any, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    board = make_leaderboard_store(uri)
    opened = tmp_path / "opened.txt"
    recorder = tmp_path / "browser.sh"
    recorder.write_text(f'#!/bin/sh\necho "$1" >> "{opened}"\n')
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    with running_ui(tmp_path, "--tracking-uri", uri, env={"BROWSER": str(recorder)}) as ui:
        url = experiment_url(ui.base_url, board, view=VIEW_ID)
        assert url in ui.output().split()  # also printed, for a machine without a browser
        assert "opening the leaderboard's ranked table in your browser" in ui.output()
        deadline = time.monotonic() + RENDER_TIMEOUT_S  # the waiter opens it once /health answers
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert opened.read_text().split() == [url]
        browser.set_window_size(*WIDE)
        try:
            rows = read_rows(browser, url, "all_mean", rows=len(METHODS))
            headers = metric_headers(browser)
        finally:
            _keep_screenshot(browser, tmp_path)
        # The runs tab, not the GenAI overview it would land on by default.
        assert f"/experiments/{board}/runs" in browser.current_url
        assert "overview" not in browser.current_url
    ranked = sorted(METHODS, key=METHODS.get, reverse=True)
    assert [r[RUN_NAME_COLUMN] for r in rows] == ranked  # by all_mean, best first
    names = metric_names(make_board())
    # Every column of the CLI's table is shown (group_mean too), in the benchmark's order.
    assert headers == [metric_column(n) for n in names.values()]
    top = rows[0]
    mean = METHODS[ranked[0]]
    assert top[metric_column("all_mean")] == f"{mean:g}"
    assert top[metric_column(names[TASKS[0]])] == f"{mean + OFFSETS[0]:.2f}"  # 90.33, not 90.3333333
    assert top[metric_column(names["Specialized"])] == f"{mean + OFFSETS[2]:.2f}"
    assert top[metric_column("group_mean")] == f"{mean - 1 / 6:.2f}"


def test_the_server_root_leads_to_the_ranked_table(browser: Any, tmp_path: Path) -> None:
    """From MLflow's home page: the leaderboard experiment (by its own name in the list), whatever page MLflow
    opens it on, starts with the link to the ranked table."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    board = make_leaderboard_store(uri)
    with running_ui(tmp_path, "--tracking-uri", uri, "--no-browser") as ui:
        assert "opening" not in ui.output()
        browser.get(ui.base_url + "/")
        wait = WebDriverWait(browser, RENDER_TIMEOUT_S)
        name = leaderboard_name("demo")
        experiment = wait.until(lambda d: d.find_elements(By.XPATH, f"//a[normalize-space()='{name}']"))[0]
        browser.get(experiment.get_attribute("href"))  # what a click does (pop-ups may cover the link)
        ranked = wait.until(lambda d: d.find_elements(By.XPATH, "//a[contains(., 'Open the ranked table')]"))[0]
        assert f"/experiments/{board}" in browser.current_url
        try:
            rows = read_runs_table(browser, ranked.get_attribute("href"), "all_mean", rows=len(METHODS))
        finally:
            _keep_screenshot(browser, tmp_path, "from-root.png")
    assert [name for name, _ in rows] == sorted(METHODS, key=METHODS.get, reverse=True)


def _keep_screenshot(driver: Any, tmp_path: Path, name: str = "runs-table.png") -> None:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    if folder := os.environ.get("ALORE_UI_SHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
