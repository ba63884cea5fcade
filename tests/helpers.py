"""Helpers shared by test modules."""

import os
import subprocess
import sys

import pytest

# `configs/tiny_synthetic.yaml` (a tiny random backbone, no dropout, no drop path) on the session's synthetic world.
TINY = "tiny_synthetic"


def tiny_overrides(world, out, *extra):
    return [f"data.root={world}", f"output_dir={out}", *extra]


def aimfl(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "aimfl", *args], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})})


def save_tiny_backbone(world, path):
    """The tiny random backbone of `tiny_overrides`, saved in timm format: the weights a site pre-stages."""
    from aim_core.config import load_config
    from aim_core.model.backbones import save_image_model

    cfg = load_config(TINY, tiny_overrides(world, "unused"))
    save_image_model(cfg.model.backbone, cfg.model.image_size, str(path))
    return str(path)


# The sites' Fleet-only proxy of a deployment (`aimfl local-federation`, tests/test_deployment.py)
needs_nginx = pytest.mark.skipif(
    not any(os.access(os.path.join(d, "nginx"), os.X_OK) for d in [*os.environ.get("PATH", "").split(os.pathsep),
                                                                    "/usr/sbin"]),
    reason="nginx is not installed (apt-get install nginx): the sites' Fleet-only proxy; .ci/run installs it")
