import os
import subprocess

# Tests never reach a model hub: fail at once instead of after huggingface_hub's retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import matplotlib.font_manager  # noqa: F401  (a fresh machine builds its font cache here, with fc-list: before the guard below)
import pytest

from aim_core.config import load_config


@pytest.fixture(autouse=True)
def programs_only_in_slow_tests(request, monkeypatch):
    """`pytest -m "not slow"` is the quick suite: a test that starts a program (the aimfl CLI, flwr, torchrun)
    must be marked slow, and fails here if it is not."""
    if request.node.get_closest_marker("slow"):
        return

    def refuse(self, args, *rest, **options):
        pytest.fail(f"this test starts a process ({args!r}); mark it @pytest.mark.slow", pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


@pytest.fixture
def tiny_cfg():
    """Loads a tiny config by name with overrides."""

    def load(name: str, *overrides: str):
        return load_config(name, list(overrides))

    return load


@pytest.fixture(scope="session")
def synthetic_world(tmp_path_factory):
    """A small synthetic world (3 train and 1 val clips per class), made once per test session."""
    from aim_core.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(str(out), seed=0, train_per_class=3, val_per_class=1, progress=False)
    return out
