"""``alorectl ui``: the MLflow UI on a sweep's tracking store.

The command prints a deep link per ``alore/*`` experiment (straight into the
runs table, see :mod:`alorectl.tracking.links`) and then *becomes* ``mlflow
server`` (``os.execvpe``): no idle ``alorectl`` parent holding the CLI's
imports while the UI runs. MLflow 3 opens its root and every experiment on its
GenAI pages and offers no server setting against it, so the command also opens
the leaderboard's ranked table in the user's web browser once the server
answers, where there is a browser (``--no-browser``: not; see
:mod:`alorectl.tracking.browser`).

Sized for a laptop: one uvicorn worker unless ``--workers`` says otherwise,
and MLflow's job execution (the huey queue consumers behind GenAI judges and
trace roll-ups, seven processes) off unless ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION``
is set; the runs table needs neither.

Credentials never reach a command line (``ps`` shows argv to every local
user): the store URI travels in ``MLFLOW_BACKEND_STORE_URI``, which ``mlflow
server`` reads as its ``--backend-store-uri``, and everything printed is masked.
An ``http(s)://`` tracking URI is already an MLflow server, which serves its own
UI: the command then only prints the links, reading the server with the
credentials moved into ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from alore.errors import AloreError, ConfigError, first_line
from alorectl.db.urls import mask_text

from alorectl import defaults
from .options import DEFAULT_WORKDIR, TrackingUri, Workdir

PORTS = range(1, 65536)


def ui(
    workdir: Workdir = DEFAULT_WORKDIR,
    tracking_uri: TrackingUri = None,
    host: Annotated[str, typer.Option(help="bind address; 127.0.0.1 keeps it on this machine")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (1-65535)")] = 5000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes (MLflow's default is 4)")] = 1,
    browser: Annotated[bool, typer.Option("--browser/--no-browser",
                                          help="open the leaderboard's ranked table in this machine's web browser "
                                               "once the UI answers (when there is a browser)")] = True,
) -> None:
    """Print deep links into the runs table of every alore experiment, then run the MLflow UI (127.0.0.1) and
    open the leaderboard's ranked table in your web browser (MLflow itself opens on its GenAI pages).

    Examples:

      alorectl ui

      alorectl ui --workdir work --port 5001
    """
    if port not in PORTS:
        raise ConfigError(f"--port {port} is out of range; valid ports: 1-65535")
    if workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    uri = defaults.tracking_uri(workdir, tracking_uri)
    if urlsplit(uri).scheme in ("http", "https"):
        from alorectl.tracking.client import configure, split_credentials  # MLflow: only when links are printed

        server, credentials = split_credentials(uri)
        configure(credentials)  # this process reads the server's experiments for the links
        landing = _landing(_print_links(server, server))
        _print_studies(workdir)
        typer.echo("the UI is served by that tracking server: open a link above")
        if browser and landing:
            _open_browser(landing, server)
        return
    _require_sqlite_file(uri)
    _require_free_port(host, port)
    base = f"http://{_link_host(host)}:{port}"
    landing = _landing(_print_links(uri, base))
    _print_studies(workdir)
    typer.echo(f"MLflow UI on {base}  (store {mask_text(uri)}; Ctrl+C stops it)")
    if browser and landing:
        _open_browser(landing, base)
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers)]
    os.execvpe(argv[0], argv, env)


def _landing(links: list[tuple[str, str]]) -> str | None:
    """The link a person should land on: the (first) leaderboard's ranked table, real results before simulated."""
    from alorectl.tracking.observer import leaderboard_name

    for prefix in (leaderboard_name(""), leaderboard_name("", simulated=True), "alore/leaderboard/"):
        found = [url for name, url in links if name.startswith(prefix)]
        if found:
            return found[0]
    return None


def _open_browser(url: str, base: str) -> None:
    """Open ``url`` in this machine's browser once ``base`` answers (MLflow has no setting that makes its root or
    an experiment open the ranked table: :mod:`alorectl.tracking.browser`); say what happens either way."""
    from alorectl.tracking.browser import available

    if available() is None:
        typer.echo("no web browser to open here: open the leaderboard link above")
        return
    typer.echo("opening the leaderboard's ranked table in your browser once the UI answers (--no-browser: don't)")
    # A short-lived parent starts the waiter and exits at once: the waiter is not left a child (a zombie, once
    # done) of the MLflow server this process becomes, and it stays in this terminal's process group (Ctrl+C).
    waiter = [sys.executable, "-m", "alorectl.tracking.browser", url, base.rstrip("/") + "/health"]
    subprocess.run([sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:])", *waiter],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _print_links(uri: str, base: str) -> list[tuple[str, str]]:
    """One line per ``alore/*`` experiment: its name and its deep link (no credentials in either)."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # schema chatter on first open
    from mlflow import MlflowClient

    from alorectl.tracking.links import experiment_links

    try:
        links = experiment_links(MlflowClient(uri), base)
    except Exception as err:  # any store or transport failure: the UI could not show it either
        first = first_line(err)
        raise AloreError(mask_text(f"cannot read the MLflow store {uri}: {first}")[:400]) from None
    if not links:
        typer.echo("no alore/* experiments in this store yet")
    for name, url in links:
        typer.echo(f"{name}\n  {url}")  # plain echo: a wrapped or re-styled link would not open
    return links


def _print_studies(workdir: Path) -> None:
    """The command that opens the sweeps' Optuna studies (optuna-dashboard is not a dependency: printed only)."""
    from alorectl.sweep.studies import dashboard_command, journal_path

    if journal_path(workdir).is_file():
        typer.echo(f"Optuna studies (parameter importance, parallel coordinates):\n  {dashboard_command(workdir)}")


def _require_free_port(host: str, port: int) -> None:
    """Another server on the port would answer the links printed next: refuse before printing any."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))  # no SO_REUSEADDR: a port someone listens on (or just closed) fails here
        except OSError as err:
            raise ConfigError(f"--port {port} is already in use on {host} ({err.strerror or err}); "
                              f"pick a free one, e.g. --port {port + 1 if port < 65535 else 5000}") from None


def _require_sqlite_file(uri: str) -> None:
    """A missing SQLite store is a work folder where no sweep ran: say so instead of serving an empty new file."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///").partition("?")[0])
    if not path.is_file():
        raise AloreError(f"no MLflow store at {path}; run a sweep first (alorectl sweep demo) or pass --tracking-uri")


def _link_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
