"""Clip transforms on uint8 frames with torchvision's v2 transforms.

Frames arrive as uint8 (T, C, H, W), already resized at decode time so that the short side
is `data.short_side` (training) or `data.input_size` (testing). Every random choice
(crop box, flip, RandAugment op, erased patch) is made once per clip and applied to all
of its frames, because the frames are wrapped as a `tv_tensors.Video`.

Training: random resized crop, horizontal flip (off for SSv2, where left/right is the
label), RandAugment, normalisation with the backbone's statistics, random erasing.
Testing: 1 centre crop or 3 crops along the long side, then normalisation.
Mixup/cutmix and label smoothing belong to the training step, not here.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from aim_core.config import ConfigError


def train_transform(data_cfg, mean, std) -> v2.Compose:
    steps = [v2.RandomResizedCrop(data_cfg.input_size, scale=tuple(data_cfg.crop_scale), antialias=True)]
    if data_cfg.flip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if data_cfg.randaugment_ops > 0:
        steps.append(v2.RandAugment(num_ops=data_cfg.randaugment_ops, magnitude=data_cfg.randaugment_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if data_cfg.random_erasing > 0:
        steps.append(v2.RandomErasing(p=data_cfg.random_erasing, value=0))
    return v2.Compose(steps)


def spatial_crops(frames: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """1 centre crop, or 3 crops (start, centre, end) along the longer side, as mmaction2's ThreeCrop."""
    height, width = frames.shape[-2:]
    if num_crops == 1:
        return [TF.center_crop(frames, [size, size])]
    if num_crops != 3:
        raise ConfigError(f"data.test_crops must be 1 or 3, got {num_crops}")
    if width >= height:
        top = (height - size) // 2
        return [TF.crop(frames, top, left, size, size) for left in (0, (width - size) // 2, width - size)]
    left = (width - size) // 2
    return [TF.crop(frames, top, left, size, size) for top in (0, (height - size) // 2, height - size)]


class TestTransform:
    """uint8 (T, C, H, W) -> float (crops, T, C, size, size), normalised."""

    def __init__(self, data_cfg, mean, std):
        self.size, self.num_crops = data_cfg.input_size, data_cfg.test_crops
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.normalize(crop) for crop in spatial_crops(frames, self.size, self.num_crops)])


def as_video(frames) -> tv_tensors.Video:
    """decord/numpy frames (T, H, W, C) uint8 -> a torchvision Video (T, C, H, W)."""
    return tv_tensors.Video(torch.as_tensor(frames).permute(0, 3, 1, 2))
