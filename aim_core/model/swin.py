"""AIM over a frozen timm Swin Transformer (paper Table 6).

As in the official Swin variant, frames are grouped into tubelets of `tubelet_size`
(the paper inflates the patch embedding to Conv3d(2, 4, 4) with the 2D weights
repeated and divided by 2, which is exactly the 2D embedding of the tubelet's mean
frame), and every other block of each stage adds temporal attention: the block's own
frozen window-attention projections, applied over the T' tubelets at each spatial
position, with a new temporal relative position bias.

Two parameters the official code leaves frozen are trained here by default: that bias table (its freeze
whitelist does not name it, so it stays at its random initialisation) and the final norm (the whitelist names
the ViT's `ln_post`, which Swin's `norm` does not match). `model.trainable_set=official` freezes both, as the
official code does.
"""

from __future__ import annotations

import torch
from einops import rearrange
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from aim_core.config import ConfigError
from aim_core.model.adapter import Adapter
from aim_core.model.attention import self_attention
from aim_core.model.backbones import build_image_model
from aim_core.model.layers import (
    Adaptations,
    ClassifierHead,
    adaptations_for,
    adapted_layers,
    trainable_set_is_official,
)


class TemporalRelativeBias(nn.Module):
    """A (2T-1, heads) table of biases for attention between time steps i and j; `trainable=False` keeps its
    random initialisation, as the official code does."""

    def __init__(self, num_steps: int, num_heads: int, trainable: bool):
        super().__init__()
        self.trainable = trainable
        self.table = nn.Parameter(torch.empty(2 * num_steps - 1, num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        steps = torch.arange(num_steps)
        self.register_buffer("index", steps[:, None] - steps[None, :] + num_steps - 1, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table[self.index].permute(2, 0, 1)  # (heads, T, T)

    def adapter_params(self) -> list[str]:
        return ["table"] if self.trainable else []


class AIMSwinBlock(nn.Module):
    def __init__(self, block: nn.Module, adapt: Adaptations, temporal_steps: int, ratio: float,
                 mlp_adapter_scale: float, drop_path: float, official: bool):
        super().__init__()
        dim = block.norm1.normalized_shape[0]
        self.block = block
        self.temporal_bias = (TemporalRelativeBias(temporal_steps, block.attn.num_heads, trainable=not official)
                              if adapt.temporal else None)
        self.t_adapter = Adapter(dim, ratio, skip_connect=False) if adapt.temporal else None
        self.s_adapter = Adapter(dim, ratio, skip_connect=True) if adapt.spatial else None
        self.mlp_adapter = Adapter(dim, ratio, skip_connect=False) if adapt.joint else None
        self.mlp_adapter_scale = mlp_adapter_scale
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """x: (B*T', H, W, C)."""
        blk = self.block
        frames, height, width, dim = x.shape
        if self.t_adapter is not None:
            xt = rearrange(x, "(b t) h w c -> (b h w) t c", t=steps)
            attn = blk.attn
            xt = self_attention(blk.norm1(xt), attn.qkv, attn.proj, attn.num_heads, attn.scale,
                                bias=self.temporal_bias())
            xt = rearrange(self.t_adapter(xt), "(b h w) t c -> (b t) h w c", h=height, w=width)
            x = x + self.drop_path(xt)

        h = blk._attn(blk.norm1(x))  # timm's own (shifted) window attention
        if self.s_adapter is not None:
            h = self.s_adapter(h)
        x = (x + h).reshape(frames, -1, dim)

        h = blk.norm2(x)
        out = x + blk.mlp(h)
        if self.mlp_adapter is not None:
            out = out + self.drop_path(self.mlp_adapter_scale * self.mlp_adapter(h))
        return out.reshape(frames, height, width, dim)


class AIMSwinStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[AIMSwinBlock]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)


class AIMSwinTransformer(nn.Module):
    """AIM over a frozen timm Swin. Input (B, T, 3, H, W); T must be a multiple of tubelet_size."""

    def __init__(self, cfg):
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        adapt = adaptations_for(cfg.variant)
        swin = build_image_model(cfg.backbone, cfg.image_size)
        if not isinstance(swin, SwinTransformer):
            raise ConfigError(f"model.backbone.name={cfg.backbone.name!r} is not a timm SwinTransformer")
        if cfg.num_frames % cfg.tubelet_size:
            raise ConfigError(f"model.num_frames={cfg.num_frames} is not a multiple of tubelet_size={cfg.tubelet_size}")
        self.tubelet_size = cfg.tubelet_size
        self.steps = cfg.num_frames // cfg.tubelet_size
        self.full_finetune = adapt.full_finetune
        self.grad_checkpointing = bool(cfg.grad_checkpointing)
        self.official = trainable_set_is_official(cfg.trainable_set)

        depth = sum(len(stage.blocks) for stage in swin.layers)
        layers = iter(adapted_layers(depth, cfg.adapter_positions, cfg.adapter_layer_count))
        off = Adaptations(spatial=False, temporal=False, joint=False)
        stages, index = [], 0
        for stage in swin.layers:
            blocks = []
            for j, block in enumerate(stage.blocks):
                # timm leaves its fused path off (experimental); measured faster here (benchmarks/swin_attention.py)
                block.attn.fused_attn = bool(cfg.swin_fused_attention)
                on = adapt if next(layers) else off
                # temporal attention in every other block of a stage, the non-shifted ones (official t_attn = i%2 == 0)
                on = Adaptations(on.spatial, on.temporal and j % 2 == 0, on.joint, on.full_finetune)
                blocks.append(AIMSwinBlock(block, on, self.steps, cfg.adapter_ratio, cfg.mlp_adapter_scale,
                                           drop_path=cfg.drop_path_rate * index / max(depth - 1, 1),
                                           official=self.official))
                index += 1
            stages.append(AIMSwinStage(stage.downsample, blocks))
        self.patch_embed = swin.patch_embed
        self.stages = nn.ModuleList(stages)
        self.norm = swin.norm
        self.head = ClassifierHead(swin.num_features, cfg.num_classes, cfg.head_dropout)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> per-tubelet features (B, T', C), spatially averaged after the final norm."""
        batch, frames = video.shape[:2]
        if frames != self.steps * self.tubelet_size:
            raise ValueError(f"clip has {frames} frames; the model was built for {self.steps * self.tubelet_size}")
        if self.tubelet_size > 1:
            video = video.view(batch, self.steps, self.tubelet_size, *video.shape[2:]).mean(dim=2)
        x = self.patch_embed(video.flatten(0, 1))
        for stage in self.stages:
            x = stage.downsample(x)
            for block in stage.blocks:
                if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                    x = checkpoint(block, x, self.steps, use_reentrant=False)
                else:
                    x = block(x, self.steps)
        x = self.norm(x)
        return x.mean(dim=(1, 2)).view(batch, self.steps, -1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.frame_features(video))

    def adapter_params(self) -> list[str]:
        """The final norm trains with the head, except under the official rule (see the module's doc)."""
        return [] if self.official else [f"norm.{name}" for name, _ in self.norm.named_parameters()]
