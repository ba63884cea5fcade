"""Multi-head self-attention over frozen projection weights, fused with SDPA.

AIM runs every block's attention twice (over space, then over time) with the same
frozen weights. This module holds references to the pre-trained qkv and output
projections (the very Parameter objects of the source model, never copies) and
computes attention with `scaled_dot_product_attention`, so both passes hit the
fused kernels and work under bf16 autocast.

One exception, measured: on the CPU, SDPA's kernel is slow for the very short sequences
of the temporal pass (T = 8 frames per token), and autograd's own batched-matmul backward
falls back to a loop over the batch there. `ShortSequenceAttention` does the same
arithmetic with contiguous batched matmuls in both directions: for 1040 sequences of
8 frames, 3 heads of 32, forward and backward took 9.9 ms against SDPA's 56 ms on 2 cores
(outputs and gradients within 1e-5), and for 65 tokens the two were even (26 / 23 ms).
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


# CPU, fp32, at most this many tokens: `ShortSequenceAttention` instead of SDPA (see the module docstring)
SHORT_SEQUENCE = 32


class ShortSequenceAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over (..., tokens, head_dim), with a hand-written backward of contiguous bmm calls."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        shape = q.shape
        q, k, v = (t.reshape(-1, *shape[-2:]).contiguous() for t in (q, k, v))
        probs = torch.bmm(q, k.transpose(1, 2)).mul_(scale).softmax(-1)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        return torch.bmm(probs, v).view(shape)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs = ctx.saved_tensors
        shape = grad.shape
        grad = grad.reshape(-1, *shape[-2:]).contiguous()
        grad_v = torch.bmm(probs.transpose(1, 2).contiguous(), grad)
        grad_probs = torch.bmm(grad, v.transpose(1, 2).contiguous())
        grad_logits = probs * (grad_probs - (grad_probs * probs).sum(-1, keepdim=True)) * ctx.scale
        grad_q = torch.bmm(grad_logits, k)
        grad_k = torch.bmm(grad_logits.transpose(1, 2).contiguous(), q)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
           scale: float | None) -> torch.Tensor:
    """SDPA, or `ShortSequenceAttention` for short fp32 sequences on the CPU without a bias."""
    if bias is None and q.device.type == "cpu" and q.dtype == torch.float32 and q.shape[-2] <= SHORT_SEQUENCE:
        return ShortSequenceAttention.apply(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


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
    out = attend(q, k, v, bias, scale)
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
