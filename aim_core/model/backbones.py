"""Frozen image backbones behind one small interface.

Each builder creates the image model with its own library (open_clip or timm), so
that library's pre-trained tags, hub downloads, local-file loading and weight
conversion are used exactly as their users know them. It then takes the model
apart into the pieces the AIM wrappers need. The pieces are the library's own
modules and Parameters, moved, never copied:

- `ViTParts`: stem (patches + prefix tokens + position embedding), pre-norm, one
  `ViTBlockParts` (norm1, fused frozen attention, layer scales, norm2, MLP) per block,
  and the final norm.
- Swin keeps timm's own stages; `aim_core.model.swin` wraps its blocks.

Weights policy: `pretrained` (a hub tag) or `checkpoint` (a local file) asks for
pre-trained weights, and failing to get them is an error, never a silent fallback
to random init. Both unset means random init, on purpose (tests, counting). A local
checkpoint is memory-mapped while the library loads it (`mapped_loading`).
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from dataclasses import dataclass

import torch
import torch.utils.serialization.config
from omegaconf import DictConfig, OmegaConf
from torch import nn

from aim_core.config import ConfigError
from aim_core.model.attention import FrozenAttention, linear_sharing


class PretrainedWeightsError(RuntimeError):
    """Pre-trained weights were requested but could not be loaded."""


@dataclass
class ViTBlockParts:
    norm1: nn.Module
    attn: FrozenAttention
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module


@dataclass
class ViTParts:
    stem: nn.Module  # images (N, 3, H, W) -> tokens (N, prefix + patches, D), position embedding added
    norm_pre: nn.Module
    blocks: list[ViTBlockParts]
    norm: nn.Module
    width: int
    num_prefix_tokens: int
    has_class_token: bool


class OpenClipStem(nn.Module):
    """open_clip's VisionTransformer embedding, up to (not including) ln_pre."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)


class TimmViTStem(nn.Module):
    """A timm VisionTransformer stripped to its embedding: patch_embed + _pos_embed."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        for name in ("blocks", "norm_pre", "norm", "fc_norm", "head_drop", "head"):
            setattr(vit, name, nn.Identity())
        vit.attn_pool = None
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit._pos_embed(self.vit.patch_embed(x))


def _overrides(cfg) -> dict:
    overrides = cfg.overrides or {}
    return OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig) else dict(overrides)


def _is_path(value: str) -> bool:
    return os.sep in value or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def _check_weights_request(cfg) -> str | None:
    """Returns the local checkpoint path, if any, after checking that it exists."""
    if cfg.checkpoint:
        path = os.path.expanduser(str(cfg.checkpoint))
        if not os.path.isfile(path):
            raise PretrainedWeightsError(
                f"model.backbone.checkpoint={cfg.checkpoint!r}: no such file. Point it to the "
                f"pre-trained weights of {cfg.name!r} on this machine (the synthetic world's embedded "
                "image model is made by `aimfl pretrain-image`)."
            )
        return path
    if cfg.pretrained and _is_path(str(cfg.pretrained)):
        raise PretrainedWeightsError(
            f"model.backbone.pretrained={cfg.pretrained!r} looks like a file path; "
            "pretrained takes a hub tag, local files go in model.backbone.checkpoint"
        )
    return None


def mapped_loading(checkpoint: str | None):
    """While the library reads `checkpoint`, torch.load maps the file instead of reading it into memory.

    The library then copies each tensor from the page cache into its module, so a load needs
    memory for one model rather than two, and the ClientApp processes of a deployed site (one per
    message) share the file's cached pages. Only torch's zip format can be mapped; safetensors
    files are mapped by safetensors itself.
    """
    if checkpoint and zipfile.is_zipfile(checkpoint):
        return torch.utils.serialization.config.patch({"load.mmap": True})
    return contextlib.nullcontext()


def _download_error(cfg, library: str, err: Exception) -> PretrainedWeightsError:
    return PretrainedWeightsError(
        f"could not fetch the {library} weights {cfg.name!r} with tag {cfg.pretrained!r}: "
        f"{type(err).__name__}: {err}\nThis machine may be offline. Download the checkpoint where a hub is "
        "reachable and set model.backbone.checkpoint=/path/to/weights on the command line or in the config "
        "(or model.backbone.pretrained=null to train from random weights on purpose). "
        "HF_HUB_OFFLINE=1 makes this fail at once instead of after the hub's retries."
    )


# ---------------------------------------------------------------- open_clip


def build_open_clip_visual(cfg, image_size: int) -> nn.Module:
    import open_clip
    from open_clip.model import _build_vision_tower

    checkpoint = _check_weights_request(cfg)
    model_cfg = open_clip.get_model_config(cfg.name)
    if model_cfg is None:
        raise ConfigError(f"model.backbone.name={cfg.name!r} is not an open_clip model; see open_clip.list_models()")
    if cfg.overrides and cfg.pretrained:
        raise ConfigError(
            "model.backbone.overrides cannot be combined with an open_clip hub tag; register a model config with "
            "open_clip.add_model_config, or give the reshaped model's weights in model.backbone.checkpoint"
        )
    if cfg.overrides or not (cfg.pretrained or checkpoint):
        vision_cfg = {**model_cfg["vision_cfg"], "image_size": image_size, **_overrides(cfg)}
        tower = _build_vision_tower(model_cfg["embed_dim"], vision_cfg, quick_gelu=bool(cfg.quick_gelu))
        if checkpoint:  # a reshaped tower open_clip has no config for: its own state dict, from save_image_model
            _load_tower_state(tower, checkpoint)
        return tower
    try:
        with mapped_loading(checkpoint):
            clip = open_clip.create_model(
                cfg.name,
                pretrained=checkpoint or cfg.pretrained,
                force_image_size=image_size,
                force_quick_gelu=bool(cfg.quick_gelu),
                require_pretrained=True,
            )
    except PretrainedWeightsError:
        raise
    except Exception as err:  # hub, network and format errors all mean: no weights
        if checkpoint:
            raise PretrainedWeightsError(f"could not load open_clip weights from {checkpoint}: {err}") from err
        raise _download_error(cfg, "open_clip", err) from err
    return clip.visual


def _load_tower_state(tower: nn.Module, checkpoint: str) -> None:
    """Loads a vision tower's weights saved by `save_image_model` (or a whole CLIP state dict's `visual.*` keys)."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(checkpoint))
        if any(key.startswith("visual.") for key in state):
            state = {key[len("visual."):]: value for key, value in state.items() if key.startswith("visual.")}
        tower.load_state_dict(state)
    except Exception as err:
        detail = " ".join(str(err).split())  # load_state_dict lists every mismatch on lines of its own
        raise PretrainedWeightsError(f"could not load open_clip weights from {checkpoint}: "
                                     f"{detail[:300]}{'...' if len(detail) > 300 else ''}") from err


def vit_parts_from_open_clip(visual: nn.Module) -> ViTParts:
    blocks = []
    for i, blk in enumerate(visual.transformer.resblocks):
        if not isinstance(blk.attn, nn.MultiheadAttention):
            raise ValueError(f"open_clip block {i} has attention {type(blk.attn).__name__}; AIM needs self-attention")
        mha = blk.attn
        attn = FrozenAttention(linear_sharing(mha.in_proj_weight, mha.in_proj_bias), mha.out_proj, mha.num_heads)
        blocks.append(ViTBlockParts(blk.ln_1, attn, blk.ls_1, blk.ln_2, blk.mlp, blk.ls_2))
    return ViTParts(
        stem=OpenClipStem(visual),
        norm_pre=visual.ln_pre,
        blocks=blocks,
        norm=visual.ln_post,
        width=visual.class_embedding.shape[-1],
        num_prefix_tokens=1,
        has_class_token=True,
    )


# ---------------------------------------------------------------- timm


def _timm_name(cfg) -> str:
    return f"{cfg.name}.{cfg.pretrained}" if cfg.pretrained else cfg.name


def build_timm_model(cfg, **kwargs) -> nn.Module:
    import timm

    checkpoint = _check_weights_request(cfg)
    kwargs = {**kwargs, **_overrides(cfg), "num_classes": 0}
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = {"file": checkpoint}
    wants_weights = bool(cfg.pretrained or checkpoint)
    try:
        with mapped_loading(checkpoint):
            return timm.create_model(_timm_name(cfg), pretrained=wants_weights, **kwargs)
    except Exception as err:
        if not wants_weights:
            raise
        if checkpoint:
            raise PretrainedWeightsError(f"could not load timm weights from {checkpoint}: {err}") from err
        raise _download_error(cfg, "timm", err) from err


def vit_parts_from_timm(vit: nn.Module) -> ViTParts:
    from timm.models.vision_transformer import Block, VisionTransformer

    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"timm model {type(vit).__name__} is not a VisionTransformer")
    blocks = []
    for i, blk in enumerate(vit.blocks):
        if type(blk) is not Block or getattr(blk.attn, "gate", None) is not None:
            raise ValueError(f"timm block {i} ({type(blk).__name__}) is not a plain pre-norm ViT block")
        a = blk.attn
        attn = FrozenAttention(a.qkv, a.proj, a.num_heads, a.scale, a.q_norm, a.k_norm, getattr(a, "norm", None))
        blocks.append(ViTBlockParts(blk.norm1, attn, blk.ls1, blk.norm2, blk.mlp, blk.ls2))
    norm_pre, norm = vit.norm_pre, vit.norm
    if isinstance(norm, nn.Identity):
        norm = vit.fc_norm  # timm ViTs with fc_norm (global pooling) normalise after pooling
    return ViTParts(
        stem=TimmViTStem(vit),
        norm_pre=norm_pre,
        blocks=blocks,
        norm=norm,
        width=vit.embed_dim,
        num_prefix_tokens=vit.num_prefix_tokens,
        has_class_token=vit.cls_token is not None,
    )


def build_image_model(cfg, image_size: int) -> nn.Module:
    """The image model of a `model.backbone` config, as its library builds it (open_clip's vision tower, timm's
    model)."""
    if cfg.family == "open_clip":
        return build_open_clip_visual(cfg, image_size)
    if cfg.family in ("timm_vit", "timm_swin"):
        return build_timm_model(cfg, img_size=image_size, drop_path_rate=0.0)
    raise ConfigError(f"model.backbone.family={cfg.family!r} is not one of open_clip, timm_vit, timm_swin")


def save_image_model(cfg, image_size: int, path: str) -> None:
    """Writes the image model's weights in its library's own format, to be loaded by `model.backbone.checkpoint`
    with the same backbone config: how an operator stages one set of frozen weights on every site."""
    torch.save(build_image_model(cfg, image_size).state_dict(), path)


def build_vit_parts(cfg, image_size: int) -> ViTParts:
    if cfg.family == "open_clip":
        return vit_parts_from_open_clip(build_image_model(cfg, image_size))
    if cfg.family == "timm_vit":
        return vit_parts_from_timm(build_image_model(cfg, image_size))
    raise ConfigError(f"model.backbone.family={cfg.family!r} is not a ViT family (open_clip, timm_vit)")
