"""AIM: a frozen image ViT adapted to video with bottleneck adapters (Yang et al., ICLR 2023).

Video tokens are kept as (B*T, N, D): each frame runs through the frozen image blocks.
Every adapted block adds, in this order:

    temporal  z = z + drop_path(Adapter_T(MSA(LN1(z))))        the same frozen MSA/LN1,
                                                               over the T frames of every token
    spatial   z = z + Adapter_S(MSA(LN1(z)))                   Adapter_S has its own skip
    joint     z = z + MLP(LN2(z)) + drop_path(s * Adapter_M(LN2(z)))

All adapters start at zero output (identity for Adapter_S), so an untrained AIM model
is exactly the frozen image model applied frame by frame.
"""

from __future__ import annotations

import torch
from einops import rearrange
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

from aim_core.model.adapter import Adapter
from aim_core.model.backbones import ViTBlockParts, build_vit_parts
from aim_core.model.layers import (
    Adaptations,
    ClassifierHead,
    TemporalEmbedding,
    adaptations_for,
    adapted_layers,
    trainable_set_is_official,
)


class AIMBlock(nn.Module):
    """One frozen pre-norm transformer block with AIM's temporal, spatial and joint adapters."""

    def __init__(
        self,
        parts: ViTBlockParts,
        dim: int,
        adapt: Adaptations,
        ratio: float,
        mlp_adapter_scale: float,
        temporal_adapter_in: bool,
        drop_path: float,
    ):
        super().__init__()
        self.norm1, self.attn, self.ls1 = parts.norm1, parts.attn, parts.ls1
        self.norm2, self.mlp, self.ls2 = parts.norm2, parts.mlp, parts.ls2
        self.t_adapter_in = Adapter(dim, ratio, skip_connect=True) if adapt.temporal and temporal_adapter_in else None
        self.t_adapter = Adapter(dim, ratio, skip_connect=False) if adapt.temporal else None
        self.s_adapter = Adapter(dim, ratio, skip_connect=True) if adapt.spatial else None
        self.mlp_adapter = Adapter(dim, ratio, skip_connect=False) if adapt.joint else None
        self.mlp_adapter_scale = mlp_adapter_scale
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.t_adapter is not None:
            # every token, the [class] token included, attends to its own position in the other frames
            xt = rearrange(x, "(b t) n d -> (b n) t d", t=num_frames)
            xt = self.norm1(xt)
            if self.t_adapter_in is not None:
                xt = self.t_adapter_in(xt)
            xt = self.t_adapter(self.attn(xt))
            x = x + self.drop_path(rearrange(xt, "(b n) t d -> (b t) n d", n=x.shape[1]))

        h = self.attn(self.norm1(x))
        if self.s_adapter is not None:
            h = self.s_adapter(h)
        x = x + self.ls1(h)

        h = self.norm2(x)
        out = x + self.ls2(self.mlp(h))
        if self.mlp_adapter is not None:
            out = out + self.drop_path(self.mlp_adapter_scale * self.mlp_adapter(h))
        return out


class AIMVisionTransformer(nn.Module):
    """AIM over a frozen ViT (open_clip CLIP or any plain timm ViT). Input (B, T, 3, H, W)."""

    def __init__(self, cfg):
        super().__init__()
        adapt = adaptations_for(cfg.variant)
        trainable_set_is_official(cfg.trainable_set)  # checked only: for a ViT both rules train the same set
        parts = build_vit_parts(cfg.backbone, cfg.image_size)
        depth, dim = len(parts.blocks), parts.width
        layers = adapted_layers(depth, cfg.adapter_positions, cfg.adapter_layer_count)
        off = Adaptations(spatial=False, temporal=False, joint=False)
        self.num_frames = cfg.num_frames
        self.full_finetune = adapt.full_finetune
        self.grad_checkpointing = bool(cfg.grad_checkpointing)
        self.has_class_token = parts.has_class_token
        self.num_prefix_tokens = parts.num_prefix_tokens

        self.stem = parts.stem
        self.temporal_embedding = TemporalEmbedding(cfg.num_frames, dim) if adapt.temporal else None
        self.norm_pre = parts.norm_pre
        self.blocks = nn.ModuleList(
            AIMBlock(
                block,
                dim,
                adapt if layers[i] else off,
                ratio=cfg.adapter_ratio,
                mlp_adapter_scale=cfg.mlp_adapter_scale,
                temporal_adapter_in=cfg.temporal_adapter_in,
                drop_path=cfg.drop_path_rate * i / max(depth - 1, 1),
            )
            for i, block in enumerate(parts.blocks)
        )
        self.norm = parts.norm
        self.head = ClassifierHead(dim, cfg.num_classes, cfg.head_dropout)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> per-frame features (B, T, D), [class] token (or token mean) after the final norm."""
        batch, frames = video.shape[:2]
        x = self.stem(video.flatten(0, 1))
        if self.temporal_embedding is not None:
            x = self.temporal_embedding(x, frames)
        x = self.norm_pre(x)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, frames, use_reentrant=False)
            else:
                x = block(x, frames)
        pooled = x[:, 0] if self.has_class_token else x[:, self.num_prefix_tokens :].mean(dim=1)
        return self.norm(pooled).view(batch, frames, -1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.frame_features(video))

    def adapter_params(self) -> list[str]:
        """The final norm is trained with the head (the official `ln_post`)."""
        return [f"norm.{name}" for name, _ in self.norm.named_parameters()]
