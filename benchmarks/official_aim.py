"""The baseline every speed claim is a ratio against: AIM written as the official code writes it.

`mmaction/models/backbones/vit_clip.py` of taoyang1122/adapt-image-models, on today's torch: CLIP's token layout
(L, N, D), `nn.MultiheadAttention` called once for the temporal and once for the spatial pass, the adapters as the
paper's equations apply them, `ln_post` on every token, the I3D head pooling the class tokens. Only benchmarks use
it; the product never imports it.

`OfficialAIM(model)` takes the weights of an aimfl CLIP model (frozen layers, adapters, temporal
embedding, head), so the two compute the same function and can be timed on the same input.
"""

from __future__ import annotations

import copy

import torch
from einops import rearrange
from timm.layers import DropPath
from torch import nn


class OfficialBlock(nn.Module):
    """`ResidualAttentionBlock` with T-, S- and MLP-adapters (and `T_Adapter_in` for SSv2)."""

    def __init__(self, aimfl_block: nn.Module, num_frames: int):
        super().__init__()
        frozen = aimfl_block.attn
        dim = frozen.proj.in_features
        self.attn = nn.MultiheadAttention(dim, frozen.num_heads)
        with torch.no_grad():
            self.attn.in_proj_weight.copy_(frozen.qkv.weight)
            self.attn.in_proj_bias.copy_(frozen.qkv.bias)
            self.attn.out_proj.weight.copy_(frozen.proj.weight)
            self.attn.out_proj.bias.copy_(frozen.proj.bias)
        self.ln_1, self.ln_2 = copy.deepcopy(aimfl_block.norm1), copy.deepcopy(aimfl_block.norm2)
        self.mlp = copy.deepcopy(aimfl_block.mlp)
        self.T_Adapter_in = copy.deepcopy(aimfl_block.t_adapter_in)
        self.T_Adapter = copy.deepcopy(aimfl_block.t_adapter)
        self.S_Adapter = copy.deepcopy(aimfl_block.s_adapter)
        self.MLP_Adapter = copy.deepcopy(aimfl_block.mlp_adapter)
        self.scale = aimfl_block.mlp_adapter_scale
        self.drop_path = DropPath(aimfl_block.drop_path.drop_prob) if isinstance(aimfl_block.drop_path, DropPath) \
            else nn.Identity()
        self.num_frames = num_frames

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False, attn_mask=None)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]  # x: (HW+1, B*T, D)
        xt = rearrange(x, "n (b t) d -> t (b n) d", t=self.num_frames)
        xt = self.ln_1(xt)
        if self.T_Adapter_in is not None:
            xt = self.T_Adapter_in(xt)
        xt = self.T_Adapter(self.attention(xt))
        xt = rearrange(xt, "t (b n) d -> n (b t) d", n=n)
        x = x + self.drop_path(xt)
        x = x + self.S_Adapter(self.attention(self.ln_1(x)))
        xn = self.ln_2(x)
        return x + self.mlp(xn) + self.drop_path(self.scale * self.MLP_Adapter(xn))


class OfficialAIM(nn.Module):
    """`ViT_CLIP` with `I3DHead`; trainable as the official freeze rule says (adapters, temporal embedding,
    ln_post, the head)."""

    def __init__(self, aimfl_model: nn.Module):
        super().__init__()
        stem = aimfl_model.stem
        self.conv1 = copy.deepcopy(stem.conv1)
        self.class_embedding = nn.Parameter(stem.class_embedding.detach().clone())
        self.positional_embedding = nn.Parameter(stem.positional_embedding.detach().clone())
        self.temporal_embedding = nn.Parameter(aimfl_model.temporal_embedding.weight.detach().clone()[None])
        self.ln_pre = copy.deepcopy(aimfl_model.norm_pre)
        self.num_frames = aimfl_model.num_frames
        self.resblocks = nn.Sequential(*(OfficialBlock(b, self.num_frames) for b in aimfl_model.blocks))
        self.ln_post = copy.deepcopy(aimfl_model.norm)
        self.dropout = copy.deepcopy(aimfl_model.head.dropout)
        self.fc_cls = copy.deepcopy(aimfl_model.head.fc)
        for name, parameter in self.named_parameters():
            parameter.requires_grad = any(key in name for key in ("temporal_embedding", "ln_post", "fc_cls",
                                                                  "Adapter"))

    full_finetune = False  # what aimfl's trainable set asks of a model (aim_core/model/trainable.py)

    def adapter_params(self) -> list[str]:
        """The official rule's non-adapter trainables, as aimfl's optimiser reads them (the adapters declare
        their own)."""
        return ["temporal_embedding", "ln_post.weight", "ln_post.bias", "fc_cls.weight", "fc_cls.bias"]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]  # (B, T, 3, H, W), aimfl's input; the official code takes (B, 3, T, H, W)
        x = self.conv1(video.flatten(0, 1))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                             device=x.device)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        n = x.shape[1]
        x = rearrange(x, "(b t) n d -> (b n) t d", t=t) + self.temporal_embedding
        x = rearrange(x, "(b n) t d -> (b t) n d", n=n)
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        x = self.resblocks(x).permute(1, 0, 2)
        x = self.ln_post(x)[:, 0]
        x = rearrange(x, "(b t) d -> b d t", b=b, t=t)[..., None, None]  # (B, D, T, 1, 1), as I3DHead takes it
        x = nn.functional.adaptive_avg_pool3d(x, 1).flatten(1)
        return self.fc_cls(self.dropout(x))
