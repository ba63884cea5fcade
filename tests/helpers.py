"""Helpers shared by test modules."""

import os
import subprocess
import sys

# `configs/tiny_synthetic.yaml` (a tiny random backbone, no dropout, no drop path) on the session's synthetic world.
TINY = "tiny_synthetic"


def tiny_overrides(world, out, *extra):
    return [f"data.root={world}", f"output_dir={out}", *extra]


def aimfl(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "aimfl", *args], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})})


def save_tiny_backbone(world, path):
    """The tiny random backbone of `tiny_overrides`, saved in timm format: the weights a site pre-stages."""
    import torch

    from aim_core.config import load_config
    from aim_core.model.backbones import build_timm_model

    cfg = load_config(TINY, tiny_overrides(world, "unused"))
    torch.save(build_timm_model(cfg.model.backbone, img_size=cfg.model.image_size).state_dict(), path)
    return str(path)
