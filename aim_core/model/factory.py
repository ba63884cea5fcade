"""`build_model`: the video model a `model` config describes, frozen as AIM prescribes."""

from __future__ import annotations

from torch import nn

from aim_core.model.swin import AIMSwinTransformer
from aim_core.model.trainable import freeze_for_training
from aim_core.model.vit import AIMVisionTransformer


def build_model(cfg) -> nn.Module:
    """The ViT or Swin AIM model of the `model` config section, with only its trainable set requiring gradients."""
    model = AIMSwinTransformer(cfg) if cfg.backbone.family == "timm_swin" else AIMVisionTransformer(cfg)
    freeze_for_training(model)
    return model
