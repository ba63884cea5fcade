"""Which frames of a video make a clip, as in the paper (and mmaction2).

- Dense sampling (Kinetics): `clip_len` frames `interval` apart. Training takes one clip at
  a random start; testing takes `num_clips` clips with evenly spaced starts.
- Uniform sampling (SSv2, Diving-48): the video is cut into `clip_len` equal segments and
  one frame is taken from each, at random within the segment in training and at the
  segment centre at test (several test clips use evenly spread offsets within segments).

A video shorter than the window loops (dense) or repeats frames (uniform), so indices
are always valid: 0 <= index < num_frames. Every function returns (clips, clip_len).
"""

from __future__ import annotations

import numpy as np

from aim_core.config import ConfigError


def _check(num_frames: int, clip_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip length must be positive, got {clip_len}")


def dense_train_indices(num_frames: int, clip_len: int, interval: int, rng: np.random.Generator) -> np.ndarray:
    _check(num_frames, clip_len)
    span = (clip_len - 1) * interval + 1
    start = rng.integers(0, max(num_frames - span, 0) + 1)
    return ((start + np.arange(clip_len) * interval) % num_frames)[None]


def dense_test_indices(num_frames: int, clip_len: int, interval: int, num_clips: int) -> np.ndarray:
    _check(num_frames, clip_len)
    span = (clip_len - 1) * interval + 1
    if num_frames > span:
        stride = (num_frames - span + 1) / num_clips
        starts = (np.arange(num_clips) * stride + stride / 2).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    return (starts[:, None] + np.arange(clip_len)[None] * interval) % num_frames


def uniform_train_indices(num_frames: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    _check(num_frames, clip_len)
    segment = num_frames / clip_len
    offsets = np.arange(clip_len) * segment + rng.uniform(0, segment, size=clip_len)
    return np.minimum(offsets.astype(np.int64), num_frames - 1)[None]


def uniform_test_indices(num_frames: int, clip_len: int, num_clips: int) -> np.ndarray:
    _check(num_frames, clip_len)
    segment = num_frames / clip_len
    positions = (np.arange(num_clips) + 0.5) / num_clips  # 0.5: the segment centre for one clip
    offsets = np.arange(clip_len)[None] * segment + positions[:, None] * segment
    return np.minimum(offsets.astype(np.int64), num_frames - 1)


def sample_indices(
    num_frames: int,
    clip_len: int,
    sampling: str,
    interval: int,
    train: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    if sampling == "dense":
        if train:
            return dense_train_indices(num_frames, clip_len, interval, rng)
        return dense_test_indices(num_frames, clip_len, interval, num_clips)
    if sampling == "uniform":
        if train:
            return uniform_train_indices(num_frames, clip_len, rng)
        return uniform_test_indices(num_frames, clip_len, num_clips)
    raise ConfigError(f"data.sampling={sampling!r}; choose dense or uniform")
