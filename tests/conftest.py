import os

# Tests never reach a model hub: fail at once instead of after huggingface_hub's retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from aim_core.config import load_config


@pytest.fixture
def tiny_cfg():
    """Loads a tiny config by name with overrides."""

    def load(name: str, *overrides: str):
        return load_config(name, list(overrides))

    return load

