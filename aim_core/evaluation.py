"""Multi-view evaluation: softmax averaged over clips x crops, as the paper tests."""

from __future__ import annotations

import torch


@torch.no_grad()
def average_view_probabilities(model: torch.nn.Module, views: torch.Tensor, max_views_per_forward: int) -> torch.Tensor:
    """views: (B, V, T, C, H, W) -> class probabilities (B, classes), the mean of the V views' softmax.

    At most `max_views_per_forward` clips go through the model at once, to bound memory.
    """
    batch, num_views = views.shape[:2]
    flat = views.flatten(0, 1)
    probs = torch.cat([model(chunk).float().softmax(dim=-1) for chunk in flat.split(max_views_per_forward)])
    return probs.view(batch, num_views, -1).mean(dim=1)
