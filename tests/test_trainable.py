"""Saving and loading the trainable state (the file centralized and federated runs share)."""

import json

import pytest
import torch
from safetensors import safe_open

from aim_core.config import to_dict
from aim_core.engine.checkpoint import CheckpointError, load_trainable, save_trainable
from aim_core.model.factory import build_model
from aim_core.model.trainable import TrainableStateError, trainable_names, trainable_state


def test_trainable_state_round_trips_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg("tiny_clip")
    torch.manual_seed(0)
    source = build_model(cfg.model)
    with torch.no_grad():
        for p in source.parameters():
            if p.requires_grad:
                p.normal_()
    path = tmp_path / "adapters.safetensors"
    save_trainable(source, str(path), to_dict(cfg))

    torch.manual_seed(0)  # the same frozen backbone, fresh adapters
    target = build_model(cfg.model)
    frozen = {n: p.clone() for n, p in target.named_parameters() if not p.requires_grad}
    load_trainable(target, str(path), to_dict(cfg))
    for name, value in trainable_state(source).items():
        assert torch.equal(dict(target.named_parameters())[name], value), name
    for name, value in frozen.items():
        assert torch.equal(dict(target.named_parameters())[name], value), name

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(trainable_names(source))
    assert meta["backbone"] == "open_clip:ViT-B-16"
    assert json.loads(meta["config"])["model"]["variant"] == "aim"
    assert json.loads(meta["shapes"])["head.fc.weight"] == [5, 64]


def test_loading_onto_another_backbone_is_a_clear_error(tiny_cfg, tmp_path):
    clip = tiny_cfg("tiny_clip")
    path = str(tmp_path / "clip.safetensors")
    save_trainable(build_model(clip.model), path, to_dict(clip))
    vit = tiny_cfg("tiny_timm_vit")
    with pytest.raises(TrainableStateError, match="open_clip:ViT-B-16.*timm_vit:vit_base_patch16_224"):
        load_trainable(build_model(vit.model), path, to_dict(vit))


def test_loading_onto_a_different_shape_names_the_key(tiny_cfg, tmp_path):
    five = tiny_cfg("tiny_clip")
    path = str(tmp_path / "five.safetensors")
    save_trainable(build_model(five.model), path, to_dict(five))
    seven = tiny_cfg("tiny_clip", "data.num_classes=7")
    with pytest.raises(TrainableStateError, match="head.fc.weight"):
        load_trainable(build_model(seven.model), path, to_dict(seven))
    spatial = tiny_cfg("tiny_clip", "model.variant=spatial")
    with pytest.raises(TrainableStateError, match="unexpected"):
        load_trainable(build_model(spatial.model), path, to_dict(spatial))


def test_a_foreign_file_is_rejected(tmp_path):
    from safetensors.torch import save_file

    path = str(tmp_path / "other.safetensors")
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an aimfl trainable-state file"):
        load_trainable(torch.nn.Linear(2, 2), path, {"model": {"backbone": {"family": "x", "name": "y"}}})
