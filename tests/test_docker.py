"""docker/: no Docker engine here, so check what can be checked: the compose file parses, every service
runs a real alorectl/ray/mlflow command, its environment names are the ones the code reads, nothing is
published beyond 127.0.0.1 and no credential is written into the files."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer
import yaml

from alorectl.cli import app

DOCKER = Path(__file__).resolve().parents[1] / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def cli_envvars() -> set[str]:
    names: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for p in cmd.params:
            envvar = getattr(p, "envvar", None)
            names.update([envvar] if isinstance(envvar, str) else envvar or [])
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return names


def test_compose_has_the_cluster_services() -> None:
    assert set(compose()["services"]) == {"postgres", "mlflow", "ray-head", "ray-worker"}


def test_every_service_runs_a_real_command() -> None:
    services = compose()["services"]
    for name in ("mlflow", "ray-head", "ray-worker"):
        entry = services[name]["entrypoint"][0]
        command = services[name]["command"]
        assert entry in ("alorectl", "ray", "mlflow"), name
        if entry == "ray":
            assert command[0] == "start" and "--block" in command
        if entry == "mlflow":
            assert command[0] == "server" and "--backend-store-uri" in command
    # The ray subcommand and flags exist in the installed Ray.
    from ray.scripts.scripts import start

    flags = {opt for p in start.params for opt in p.opts}
    for name in ("ray-head", "ray-worker"):
        for arg in services[name]["command"][1:]:
            assert arg.split("=")[0] in flags, arg
    from mlflow.cli import server

    mflags = {opt for p in server.params for opt in p.opts}
    assert all(a in mflags for a in services["mlflow"]["command"][1:] if a.startswith("--"))


def test_environment_names_match_what_the_code_reads() -> None:
    env = compose()["x-alore-env"]
    read = cli_envvars()
    assert set(env) <= read, f"not read by alorectl: {sorted(set(env) - read)}"
    assert env["ALORE_DB"].startswith("postgresql+psycopg://")


def test_published_ports_bind_to_loopback_only() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_credentials_in_the_files() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}" in text
    assert not re.search(r"postgres(ql)?(\+psycopg)?://[^$:]+:[^$@]+@", text), "a literal password in compose.yaml"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "ENTRYPOINT [\"alorectl\"]" in dockerfile and "PASSWORD" not in dockerfile
    assert not re.search(r"COPY .*(\.npz|\.safetensors|\.pth|data)", dockerfile), "no weights or data baked in"
