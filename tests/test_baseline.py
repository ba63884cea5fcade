"""The benchmarks' baseline (benchmarks/official_aim.py, AIM as the official code writes it) computes aimfl's
function: speed ratios against it compare the same model."""

import os
import sys

import pytest
import torch

from aim_core.config import load_config
from aim_core.model.factory import build_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from official_aim import OfficialAIM  # noqa: E402


@pytest.mark.parametrize("overrides", [[], ["model.temporal_adapter_in=true", "model.mlp_adapter_scale=1.0"]])
def test_the_official_style_model_gives_aimfls_logits_and_trains_the_same_set(overrides):
    cfg = load_config("tiny_clip", overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # adapters away from their zero init, so every branch counts
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.05)
    baseline = OfficialAIM(model).eval()
    video = torch.randn(2, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size)
    with torch.no_grad():
        ours, theirs = model(video), baseline(video)
    assert ours.abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    from aim_core.model.trainable import trainable_names

    trainable = sum(p.numel() for p in baseline.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    named = dict(baseline.named_parameters())
    assert sum(named[n].numel() for n in trainable_names(baseline)) == trainable  # what aimfl's optimiser steps
