import os

# Tests never reach a model hub: fail at once instead of after huggingface_hub's retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from aim_core.config import load_config


@pytest.fixture
def tiny_cfg():
    """Loads a tiny config by name with overrides."""

    def load(name: str, *overrides: str):
        return load_config(name, list(overrides))

    return load



@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory):
    """A small synthetic world (3 train and 1 val clips per class), made once per test session."""
    from aim_core.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(out), seed=0, train_per_class=3, val_per_class=1, progress=False)
    return out
