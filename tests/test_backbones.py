"""Pre-trained weights: loaded from local files exactly, never replaced silently by random init."""

import json

import open_clip
import pytest
import timm
import torch

from aim_core.config import ConfigError
from aim_core.model.backbones import PretrainedWeightsError
from aim_core.model.factory import build_model


def test_missing_checkpoint_file_is_named(tiny_cfg, tmp_path):
    missing = tmp_path / "nowhere" / "vit.pth"
    cfg = tiny_cfg("tiny_timm_vit", f"model.backbone.checkpoint={missing}")
    with pytest.raises(PretrainedWeightsError, match="nowhere/vit.pth"):
        build_model(cfg.model)


@pytest.mark.parametrize("name", ["k400_clip_vit_b16_8f", "k400_in21k_vit_b16_8f"])
def test_unreachable_hub_names_the_tag_and_the_local_file_option(tiny_cfg, name):
    cfg = tiny_cfg(name)  # asks for hub weights; tests run with HF_HUB_OFFLINE=1
    expected = r"(?s)with tag '(openai|orig_in21k_ft_in1k)'.*model\.backbone\.checkpoint="
    with pytest.raises(PretrainedWeightsError, match=expected):
        build_model(cfg.model)


def test_a_path_in_pretrained_is_refused(tiny_cfg):
    cfg = tiny_cfg("tiny_timm_vit", "model.backbone.pretrained=/data/vit.pth")
    with pytest.raises(PretrainedWeightsError, match="model.backbone.checkpoint"):
        build_model(cfg.model)


def test_timm_local_checkpoint_is_loaded_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg("tiny_timm_vit")
    overrides = dict(cfg.model.backbone.overrides)
    source = timm.create_model("vit_base_patch16_224", img_size=32, num_classes=10, **overrides)
    path = tmp_path / "tiny_vit.pth"
    torch.save(source.state_dict(), path)  # timm's own format, with a head AIM drops

    model = build_model(tiny_cfg("tiny_timm_vit", f"model.backbone.checkpoint={path}").model)
    ours = dict(model.named_parameters())
    torch.testing.assert_close(ours["blocks.1.attn.qkv.weight"], source.blocks[1].attn.qkv.weight, rtol=0, atol=0)
    torch.testing.assert_close(ours["stem.vit.pos_embed"], source.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(ours["norm.weight"], source.norm.weight, rtol=0, atol=0)


def test_open_clip_local_checkpoint_is_loaded_exactly(tiny_cfg, tmp_path):
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "aimfl-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "aimfl-test-tiny.json")
    source = open_clip.create_model("aimfl-test-tiny")
    path = tmp_path / "tiny_clip.pt"
    torch.save(source.state_dict(), path)

    cfg = tiny_cfg("k400_clip_vit_b16_8f", "model.backbone.name=aimfl-test-tiny", "model.backbone.pretrained=null",
                   "model.backbone.quick_gelu=false", f"model.backbone.checkpoint={path}", "data.input_size=32")
    model = build_model(cfg.model)
    ours = dict(model.named_parameters())
    in_proj = source.visual.transformer.resblocks[0].attn.in_proj_weight
    torch.testing.assert_close(ours["blocks.0.attn.qkv.weight"], in_proj, rtol=0, atol=0)
    torch.testing.assert_close(ours["stem.positional_embedding"], source.visual.positional_embedding, rtol=0, atol=0)
    assert "proj" not in {n.split(".")[-1] for n in ours if n.startswith("stem")}


@pytest.mark.parametrize("name", ["tiny_clip", "tiny_timm_vit", "tiny_swin"])
def test_a_reshaped_backbone_saved_once_loads_exactly_with_its_overrides(tiny_cfg, tmp_path, name):
    """How local-federation stages one random backbone on every site: save_image_model, then model.backbone.checkpoint
    with the same overrides (open_clip has no model config for a reshaped tower)."""
    from aim_core.model.backbones import save_image_model

    cfg = tiny_cfg(name)
    torch.manual_seed(1)
    save_image_model(cfg.model.backbone, cfg.model.image_size, str(tmp_path / "backbone.pth"))
    torch.manual_seed(1)
    saved = build_model(cfg.model).state_dict()
    torch.manual_seed(2)
    loaded = build_model(tiny_cfg(name, f"model.backbone.checkpoint={tmp_path / 'backbone.pth'}").model)
    frozen = [n for n, p in loaded.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(loaded.state_dict()[n], saved[n]) for n in frozen)


def test_a_reshaped_open_clip_tower_refuses_weights_of_another_shape(tiny_cfg, tmp_path):
    from aim_core.model.backbones import save_image_model

    cfg = tiny_cfg("tiny_clip", "model.backbone.overrides.width=32")
    save_image_model(cfg.model.backbone, cfg.model.image_size, str(tmp_path / "narrow.pth"))
    with pytest.raises(PretrainedWeightsError, match="narrow.pth.*size mismatch"):
        build_model(tiny_cfg("tiny_clip", f"model.backbone.checkpoint={tmp_path / 'narrow.pth'}").model)


def test_open_clip_hub_tag_and_overrides_are_refused(tiny_cfg):
    with pytest.raises(ConfigError, match="model.backbone.checkpoint"):
        build_model(tiny_cfg("tiny_clip", "model.backbone.pretrained=openai").model)
