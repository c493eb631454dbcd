"""docker/: no Docker engine here, so check what can be checked: the compose file parses, every service
runs a real alorectl/ray/mlflow command, its environment names are the ones the code reads, nothing is
published beyond 127.0.0.1, no credential is written into the files, and none reaches a command line
(`ps` on the host shows every container's processes to every local user)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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
            assert command[0] == "server"
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
    assert set(compose()["x-ray-env"]) <= read
    assert env["ALORE_DB"].startswith("postgresql+psycopg://")


def test_mlflow_reads_its_store_from_the_environment() -> None:
    """The store URI (with the password) is in MLFLOW_BACKEND_STORE_URI, which `mlflow server` reads as
    --backend-store-uri, as `alorectl ui` does; and the server answers the Host name the head uses."""
    from mlflow.cli import server

    (option,) = [p for p in server.params if "--backend-store-uri" in p.opts]
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"
    mlflow = compose()["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert "--backend-store-uri" not in mlflow["command"]
    allowed = mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    head = compose()["x-alore-env"]["MLFLOW_TRACKING_URI"].removeprefix("http://")
    assert head in allowed and "localhost:5000" in allowed, allowed


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


# --- no credential on a command line -------------------------------------------------------------------

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY", re.I)
USERINFO = re.compile(r"[a-z][a-z0-9+.-]*://[^/@\s:]+:[^/@\s]+@", re.I)  # scheme://user:password@
VARIABLE = re.compile(r"\$\$?\{?([A-Za-z_][A-Za-z0-9_]*)")               # $X, ${X}, $$X (a container's)


def example_secrets() -> set[str]:
    """The secret values docker/env.example ships (e.g. the placeholder password)."""
    pairs = [ln.split("=", 1) for ln in (DOCKER / "env.example").read_text().splitlines()
             if "=" in ln and not ln.startswith("#")]
    return {v for k, v in pairs if SECRET_NAME.search(k) and v}


def command_lines(service: dict[str, Any]) -> list[str]:
    """What becomes a process's argv: entrypoint, command and the health check's command."""
    parts: list[Any] = [service.get("entrypoint"), service.get("command"), (service.get("healthcheck") or {}).get("test")]
    return [a for p in parts if p for a in ([p] if isinstance(p, str) else p)]


def credential_on_command_lines(services: dict[str, Any]) -> list[str]:
    found = []
    literal = example_secrets()
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        # Variables that hold a secret: a secret's name, or a value built from one or with a password in it.
        holding = {k for k, v in env.items() if SECRET_NAME.search(k) or USERINFO.search(str(v))
                   or any(SECRET_NAME.search(ref) for ref in VARIABLE.findall(str(v)))}
        for arg in command_lines(service):
            arg = str(arg)
            refs = set(VARIABLE.findall(arg))
            if USERINFO.search(arg) or any(SECRET_NAME.search(r) for r in refs) or refs & holding \
                    or any(secret in arg for secret in literal):
                found.append(f"{name}: {arg}")
    return found


def test_no_credential_on_any_command_line() -> None:
    services = compose()["services"]
    assert not credential_on_command_lines(services)
    # The credentials are there, in the environment, where they belong.
    assert "POSTGRES_PASSWORD" in services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]


def test_the_command_line_check_catches_each_way_a_password_gets_there() -> None:
    ok = compose()["services"]
    assert not credential_on_command_lines(ok)
    uri = "postgresql+psycopg://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/mlflow"
    for service, change in (
        ("mlflow", {"command": ["server", "--backend-store-uri", uri]}),               # the defect of issue 21
        ("mlflow", {"command": ["server", "--backend-store-uri", "postgresql://u:change-me@db/m"]}),
        ("mlflow", {"entrypoint": ["sh", "-c", "exec mlflow server --backend-store-uri $$MLFLOW_BACKEND_STORE_URI"]}),
        ("postgres", {"healthcheck": {"test": ["CMD-SHELL", "PGPASSWORD=${POSTGRES_PASSWORD} pg_isready"]}}),
        ("ray-head", {"command": "alorectl sweep vtab --db $ALORE_DB"}),
    ):
        broken = {**ok, service: {**ok[service], **change}}
        assert credential_on_command_lines(broken), (service, change)


def test_the_workers_get_no_credentials() -> None:
    """Trials need the data and the weights; only the head, where the driver runs, gets the databases."""
    worker = compose()["services"]["ray-worker"]["environment"]
    assert not [k for k, v in worker.items() if SECRET_NAME.search(k) or "PASSWORD" in str(v)
                or USERINFO.search(str(v))], worker
