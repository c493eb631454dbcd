"""Security rules that cut across the layers: no credentials in MLflow params or stored configs,
services on 127.0.0.1 by default, no pickle from artifacts."""

from __future__ import annotations


from alorectl.tracking import flatten
from alorectl.db.urls import mask_text


def test_mlflow_params_never_carry_a_password() -> None:
    params = flatten({"db": "postgresql+psycopg://alice:s3cret@db.internal:5432/alore",
                      "nested": {"uri": "http://bob:hunter2@mlflow:5000"}})
    assert "s3cret" not in str(params) and "hunter2" not in str(params)
    assert params["db"].startswith("postgresql+psycopg://alice:***@db.internal")


def test_mask_text_hides_the_password() -> None:
    # What a sweep stores (rows, MLflow params, files) is checked after a real sweep with a password in
    # tests/test_mlflow_outage.py; `alorectl ui` listening on 127.0.0.1 only in tests/test_ui.py.
    assert "hunter2" not in mask_text("http://bob:hunter2@mlflow:5000")


def test_no_unsafe_deserialization_in_the_code() -> None:
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [*root.glob("alore/**/*.py"), *root.glob("orchestrator/**/*.py"), *root.glob("db/**/*.py")]:
        text = path.read_text()
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth:  # the call's own closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            call = text[match.start():end]
            assert "weights_only=True" in call, (path, call)
