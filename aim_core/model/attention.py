"""Multi-head self-attention over frozen projection weights, fused with SDPA.

AIM runs every block's attention twice (over space, then over time) with the same
frozen weights. This module holds references to the pre-trained qkv and output
projections (the very Parameter objects of the source model, never copies) and
computes attention with `scaled_dot_product_attention`, so both passes hit the
fused kernels and work under bf16 autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FrozenAttention(nn.Module):
    def __init__(
        self,
        qkv: nn.Linear,
        proj: nn.Linear,
        num_heads: int,
        scale: float | None = None,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        out_norm: nn.Module | None = None,
    ):
        super().__init__()
        attn_dim = proj.in_features
        if qkv.out_features != 3 * attn_dim or attn_dim % num_heads:
            raise ValueError(
                f"attention shapes do not fit: qkv {qkv.out_features}, attention width {attn_dim}, heads {num_heads}"
            )
        self.qkv = qkv
        self.proj = proj
        self.num_heads = num_heads
        self.scale = scale
        self.q_norm = q_norm or nn.Identity()
        self.k_norm = k_norm or nn.Identity()
        self.out_norm = out_norm or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self_attention(
            x, self.qkv, self.proj, self.num_heads, self.scale,
            q_norm=self.q_norm, k_norm=self.k_norm, out_norm=self.out_norm,
        )


def self_attention(
    x: torch.Tensor,
    qkv: nn.Linear,
    proj: nn.Linear,
    num_heads: int,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
    out_norm: nn.Module | None = None,
) -> torch.Tensor:
    """Fused multi-head self-attention with the given projections.

    x: (batch, tokens, dim). bias: optional additive attention bias broadcastable to
    (batch, heads, tokens, tokens), e.g. Swin's relative position bias.
    """
    batch, tokens, _ = x.shape
    attn_dim = proj.in_features
    q, k, v = qkv(x).view(batch, tokens, 3, num_heads, attn_dim // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    out = out.transpose(1, 2).reshape(batch, tokens, attn_dim)
    if out_norm is not None:
        out = out_norm(out)
    return proj(out)


def linear_sharing(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    """An nn.Linear whose weight and bias are the given Parameters themselves (no copy)."""
    out_features, in_features = weight.shape
    with torch.device("meta"):
        layer = nn.Linear(in_features, out_features, bias=bias is not None)
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    return layer
