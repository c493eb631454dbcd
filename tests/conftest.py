"""Shared test set-up: nothing may reach the network, everything is small and seeded."""

import os

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts a real multi-node Ray cluster on localhost (slow)")
