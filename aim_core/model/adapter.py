"""The AIM bottleneck adapter: Linear(D, r*D) -> GELU -> Linear(r*D, D).

The second Linear starts at zero, so a freshly inserted adapter either passes its
input through unchanged (with the skip connection) or adds exactly nothing to the
residual stream (without it): at step 0 the video model equals the frozen image
model frame by frame.
"""

from __future__ import annotations

import torch
from torch import nn

from aim_core.config import ConfigError


class Adapter(nn.Module):
    def __init__(self, dim: int, ratio: float = 0.25, skip_connect: bool = True):
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ConfigError(f"model.adapter_ratio={ratio} leaves no hidden units for width {dim}")
        self.skip_connect = skip_connect
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return x + out if self.skip_connect else out

    def adapter_params(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def extra_repr(self) -> str:
        return f"skip_connect={self.skip_connect}"
