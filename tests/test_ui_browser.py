"""The deep link that ``alorectl ui`` prints, opened in a real headless Chromium.

A store laid out like the sweep's leaderboard experiment, the UI started
through ``alorectl ui``, the printed link opened: the runs table must be what
shows (not MLflow's GenAI overview), one row per method ranked by ``all_mean``,
and the ``all_mean`` column visible without touching "Columns".

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (``.ci/run`` installs the first two, the ``test`` extra the last):
without them the test is skipped locally and fails under CI (env ``CI`` set).
``ALORE_UI_SHOTS=<folder>`` keeps a screenshot of the page there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ui_utils import METHODS, make_leaderboard_store, running_ui

from alorectl.tracking.links import VIEW_ID, experiment_url, metric_column

RUN_NAME_COLUMN = "attributes.`Run Name`"
RENDER_TIMEOUT_S = 45


def read_runs_table(driver: Any, url: str, metric: str, rows: int) -> list[tuple[str, str]]:
    """Open ``url`` and wait for the runs table; (run name, ``metric`` cell) per row, top to bottom.

    Fails if the ``metric`` column is not shown. ag-grid splits a row between its
    pinned and scrolling parts, so cells are joined by their ``row-index``.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, RENDER_TIMEOUT_S)
    header = f"[role=columnheader][col-id='{metric_column(metric)}']"
    wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, header)))

    def table(d: Any) -> list[tuple[str, str]] | None:
        cells: dict[int, dict[str, str]] = {}
        for cell in d.find_elements(By.CSS_SELECTOR, "[role=row][row-index] [role=gridcell][col-id]"):
            row = cell.find_element(By.XPATH, "./ancestor::*[@row-index][1]").get_attribute("row-index")
            links = cell.find_elements(By.TAG_NAME, "a")  # the run name is a link; its cell also holds a colour chip
            cells.setdefault(int(row), {})[cell.get_attribute("col-id")] = (links[0] if links else cell).text.strip()
        found = [(c.get(RUN_NAME_COLUMN, ""), c.get(metric_column(metric), "")) for _, c in sorted(cells.items())]
        return found if len(found) == rows and all(name and value for name, value in found) else None

    return wait.until(table)


def test_deep_link_opens_the_ranked_runs_table(browser: Any, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    board = make_leaderboard_store(uri)
    with running_ui(tmp_path, "--tracking-uri", uri) as ui:
        url = experiment_url(ui.base_url, board, view=VIEW_ID)
        assert url in ui.output().split()  # the link under test is the one the command prints
        try:
            rows = read_runs_table(browser, url, "all_mean", rows=len(METHODS))
        finally:
            _keep_screenshot(browser, tmp_path)
        # The runs tab, not the GenAI overview it would land on by default.
        assert f"/experiments/{board}/runs" in browser.current_url
        assert "overview" not in browser.current_url
    ranked = sorted(METHODS, key=METHODS.get, reverse=True)
    assert rows == [(method, f"{METHODS[method]:g}") for method in ranked]


def _keep_screenshot(driver: Any, tmp_path: Path) -> None:
    shot = tmp_path / "runs-table.png"
    driver.save_screenshot(str(shot))
    if folder := os.environ.get("ALORE_UI_SHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / shot.name)
