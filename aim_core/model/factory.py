"""`build_model`: the video model a `model` config describes, frozen as AIM prescribes."""

from __future__ import annotations

import torch
from torch import nn

from aim_core.model.swin import AIMSwinTransformer
from aim_core.model.trainable import freeze_for_training
from aim_core.model.vit import AIMVisionTransformer


def build_model(cfg, seed: int | None = None) -> nn.Module:
    """The ViT or Swin AIM model of the `model` config section, with only its trainable set requiring gradients.

    With `seed`, its random weights (the adapters, the head, and the whole backbone when no pre-trained weights are
    asked for) are drawn from it, so every process that builds from the same config and seed holds the same model:
    training, evaluation, the server and the sites. The caller's random state is left as it was.
    """
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = AIMSwinTransformer(cfg) if cfg.backbone.family == "timm_swin" else AIMVisionTransformer(cfg)
    freeze_for_training(model)
    return model
