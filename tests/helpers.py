"""Helpers shared by test modules."""

import os
import subprocess
import sys


# A tiny random backbone on the session's synthetic world: deterministic (no dropout, no drop path).
def tiny_overrides(world, out, *extra):
    return [
        "model.backbone.checkpoint=null", "model.backbone.overrides.embed_dim=32", "model.backbone.overrides.depth=2",
        "model.backbone.overrides.num_heads=2", "model.head_dropout=0", "model.drop_path_rate=0",
        f"data.root={world}", "data.num_frames=4", "data.num_workers=0", "data.input_size=32", "data.short_side=32",
        "schedule.epochs=3", "schedule.warmup_epochs=1", "schedule.batch_size=8", "schedule.lr=3e-3",
        f"output_dir={out}", *extra,
    ]


def aimfl(*args, env=None, check=True):
    return subprocess.run([sys.executable, "-m", "aimfl", *args], capture_output=True, text=True,
                          check=check, env={**os.environ, **(env or {})})


def save_tiny_backbone(world, path):
    """The tiny random backbone of `tiny_overrides`, saved in timm format: the weights a site pre-stages."""
    import torch

    from aim_core.config import load_config
    from aim_core.model.backbones import build_timm_model

    cfg = load_config("synthetic", tiny_overrides(world, "unused"))
    torch.save(build_timm_model(cfg.model.backbone, img_size=cfg.model.image_size).state_dict(), path)
    return str(path)
