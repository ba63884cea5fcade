"""Parameter and multiply-add counts of a config, measured on the meta device.

Multiply-adds are counted by `torch.utils.flop_counter.FlopCounterMode` on a real
forward pass (matmuls, convolutions and attention, as fvcore and the paper count them:
one multiply-add = one "FLOP" in the paper's tables). The model is built on the meta
device with random-init shapes, so this needs neither weights nor a network and takes
seconds even for ViT-L/14.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from aim_core.model.factory import build_model
from aim_core.model.layers import TRAINABLE_SETS
from aim_core.model.trainable import count_parameters


def shape_only(model_cfg: DictConfig) -> DictConfig:
    """The same model config with weights loading turned off (counting needs shapes only)."""
    cfg = copy.deepcopy(model_cfg)
    cfg.backbone.pretrained = None
    cfg.backbone.checkpoint = None
    return cfg


def count_forward_macs(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops() // 2


def trainable_params_under(model_cfg: DictConfig, trainable_set: str) -> int:
    cfg = shape_only(model_cfg)
    cfg.trainable_set = trainable_set
    with torch.device("meta"):
        return count_parameters(build_model(cfg))["trainable_params"]


def model_info(cfg: DictConfig) -> dict:
    with torch.device("meta"):
        model = build_model(shape_only(cfg.model)).eval()
        video = torch.empty(1, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size)
    counts = count_parameters(model)
    macs = count_forward_macs(model, video)
    views = cfg.data.test_clips * cfg.data.test_crops
    return {
        "config": cfg.model.backbone.family + ":" + cfg.model.backbone.name,
        "variant": cfg.model.variant,
        **counts,
        "trainable_set": cfg.model.trainable_set,
        "trainable_params_by_rule": {rule: trainable_params_under(cfg.model, rule) for rule in TRAINABLE_SETS},
        "frozen_params": counts["total_params"] - counts["trainable_params"],
        "input": f"{cfg.data.num_frames}x{cfg.data.input_size}x{cfg.data.input_size}",
        "gmacs_per_view": round(macs / 1e9, 2),
        "views": views,
        "views_layout": f"{cfg.data.test_clips} clips x {cfg.data.test_crops} crops",
        "gmacs_total": round(macs * views / 1e9, 1),
        "update_bytes_fp32": counts["trainable_params"] * 4,
        "full_model_bytes_fp32": counts["total_params"] * 4,
    }
