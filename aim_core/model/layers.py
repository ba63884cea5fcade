"""What the ViT and Swin video models share: the adaptations of the paper's Table 1, which blocks get adapters
(Table 7), the temporal embedding and the classifier head.

Modules that AIM adds declare what they train with `adapter_params()` (torchtune's convention):
`aim_core.model.trainable` collects the trainable set from them, so it needs to know no model file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aim_core.config import ConfigError


@dataclass(frozen=True)
class Adaptations:
    """Which of the paper's adaptations are on (Table 1) and whether the backbone trains too."""

    spatial: bool
    temporal: bool
    joint: bool
    full_finetune: bool = False


VARIANTS = {
    "space_only": Adaptations(spatial=False, temporal=False, joint=False),  # frozen features + linear probe
    "spatial": Adaptations(spatial=True, temporal=False, joint=False),
    "temporal": Adaptations(spatial=True, temporal=True, joint=False),
    "aim": Adaptations(spatial=True, temporal=True, joint=True),
    "full_finetune": Adaptations(spatial=True, temporal=True, joint=True, full_finetune=True),
}


def adaptations_for(variant: str) -> Adaptations:
    if variant not in VARIANTS:
        raise ConfigError(f"model.variant={variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


TRAINABLE_SETS = ("aimfl", "official")


def trainable_set_is_official(trainable_set: str) -> bool:
    """`model.trainable_set`: aimfl's (the default) or the official code's freeze rule. They differ for Swin only:
    the official rule trains names with `temporal_embedding`, `ln_post`, `cls_head` or `Adapter`, which leaves out
    Swin's temporal position bias and its final norm."""
    if trainable_set not in TRAINABLE_SETS:
        raise ConfigError(f"model.trainable_set={trainable_set!r}; choose one of {', '.join(TRAINABLE_SETS)}")
    return trainable_set == "official"


def adapted_layers(depth: int, positions: str, count: int | None) -> list[bool]:
    """Which blocks get adapters (paper Table 7): all, the bottom or top `count`, or every other."""
    if positions == "all":
        return [True] * depth
    if positions == "alternate":
        return [i % 2 == 0 for i in range(depth)]
    if positions in ("bottom", "top"):
        if count is None or not 0 < count <= depth:
            raise ConfigError(f"model.adapter_layer_count must be in 1..{depth} for adapter_positions={positions}")
        bottom = [i < count for i in range(depth)]
        return bottom if positions == "bottom" else bottom[::-1]
    raise ConfigError(f"model.adapter_positions={positions!r}; choose all, bottom, top or alternate")


class TemporalEmbedding(nn.Module):
    """A learned (frames x width) embedding added to every token of each frame; zero at init."""

    def __init__(self, num_frames: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_frames, dim))

    def adapter_params(self) -> list[str]:
        return ["weight"]

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if num_frames != self.weight.shape[0]:
            raise ValueError(f"clip has {num_frames} frames; the temporal embedding was built for "
                             f"{self.weight.shape[0]}")
        x = x.view(-1, num_frames, *x.shape[1:]) + self.weight.to(x.dtype)[None, :, None, :]
        return x.flatten(0, 1)


class ClassifierHead(nn.Module):
    """Average the per-frame features over time, dropout, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def adapter_params(self) -> list[str]:
        return [name for name, _ in self.named_parameters()]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: (B, T, D) -> logits (B, classes)."""
        return self.fc(self.dropout(features.mean(dim=1)))
