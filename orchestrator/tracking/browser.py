"""Open the leaderboard's ranked table in the user's web browser once the MLflow UI answers.

MLflow 3 (checked on 3.17) has no server-side setting for what its root or an
experiment opens: the UI's "GenAI / Model training" toggle lives in each
browser's localStorage (``mlflow.workflowType``, GenAI by default, the
``mlflow.experimentKind`` tag no longer consulted), a GenAI experiment opens on
its traces overview, and a runs table shows no metric columns until a person
picks them. A deep link (``#/experiments/<id>/runs?workflowType=machine_learning&
viewStateShareKey=alore``) is the one thing that lands on the ranked table, so
``alorectl ui`` opens it for the person who typed the command.

"Where a browser is available": one the user named in ``$BROWSER``, else one
that Python's :mod:`webbrowser` starts in the background (a graphical one). A
console browser (lynx, w3m) would take over the terminal the server logs to,
so it is not used; with none, the command says so and the printed link is the
way in.

``python -m alorectl.tracking.browser URL HEALTH_URL`` is the waiter ``alorectl
ui`` starts just before it becomes the server: it polls ``HEALTH_URL`` and then
opens ``URL`` (nothing when the server never answers).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
import webbrowser
from collections.abc import Callable

WAIT_S = 180.0  # a cold MLflow start on a busy laptop


def available() -> webbrowser.BaseBrowser | None:
    """The browser to open a link in, or None (see the module's docstring)."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return None
    if os.environ.get("BROWSER"):
        return browser  # the user's explicit choice
    if isinstance(browser, webbrowser.GenericBrowser) and not isinstance(browser, webbrowser.BackgroundBrowser):
        return None  # a console browser: it would hold the terminal
    if isinstance(browser, webbrowser.UnixBrowser) and not browser.background:
        return None
    return browser


def answers(url: str, wait_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether ``url`` answers 200 within ``wait_s`` seconds (polled every 0.5 s while ``alive()``)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def open_when_up(url: str, health: str, wait_s: float = WAIT_S) -> bool:
    """Wait for ``health`` to answer 200, then open ``url``; False when it never answered or nothing opened."""
    if not answers(health, wait_s):
        return False
    browser = available()
    return bool(browser and browser.open(url, new=2))


if __name__ == "__main__":
    sys.exit(0 if open_when_up(sys.argv[1], sys.argv[2]) else 1)
