"""Frame indices: count, range, dense stride, uniform segments, deterministic test clips."""

import numpy as np
import pytest

from aim_core.data.sampling import (
    dense_test_indices,
    dense_train_indices,
    sample_indices,
    uniform_test_indices,
    uniform_train_indices,
)

VIDEO_LENGTHS = [1, 5, 7, 8, 30, 64, 127, 128, 300, 1001]


@pytest.mark.parametrize("num_frames", VIDEO_LENGTHS)
@pytest.mark.parametrize("clip_len,interval", [(8, 16), (16, 8), (32, 4), (8, 1)])
def test_dense_indices_are_valid_and_strided(num_frames, clip_len, interval):
    for seed in range(5):
        idx = dense_train_indices(num_frames, clip_len, interval, np.random.default_rng(seed))
        assert idx.shape == (1, clip_len)
        assert idx.min() >= 0 and idx.max() < num_frames
        if num_frames >= (clip_len - 1) * interval + 1:  # long enough: no looping, the exact stride
            assert (np.diff(idx[0]) == interval).all()
    test = dense_test_indices(num_frames, clip_len, interval, num_clips=3)
    assert test.shape == (3, clip_len) and test.min() >= 0 and test.max() < num_frames


def test_dense_training_start_is_random():
    starts = {int(dense_train_indices(300, 8, 16, np.random.default_rng(s))[0, 0]) for s in range(20)}
    assert len(starts) > 5 and max(starts) <= 300 - 113


def test_dense_test_clips_are_evenly_spaced_and_deterministic():
    a = dense_test_indices(300, 8, 16, num_clips=3)
    assert np.array_equal(a, dense_test_indices(300, 8, 16, num_clips=3))
    starts = a[:, 0]
    assert np.diff(np.diff(starts)).max() <= 1  # equal gaps up to rounding
    assert starts[0] > 0 and starts[-1] + 7 * 16 < 300  # spread over the video, not bunched at one end
    five = dense_test_indices(1000, 8, 4, num_clips=5)[:, 0]
    assert np.all(np.abs(np.diff(five) - np.diff(five).mean()) <= 1)


@pytest.mark.parametrize("num_frames", VIDEO_LENGTHS)
@pytest.mark.parametrize("clip_len", [8, 16, 32])
def test_uniform_takes_one_frame_per_segment(num_frames, clip_len):
    segment = num_frames / clip_len
    for seed in range(5):
        idx = uniform_train_indices(num_frames, clip_len, np.random.default_rng(seed))[0]
        assert idx.shape == (clip_len,) and idx.min() >= 0 and idx.max() < num_frames
        for i, frame in enumerate(idx):
            assert np.floor(i * segment) <= frame <= max(np.ceil((i + 1) * segment) - 1, np.floor(i * segment))
        assert (np.diff(idx) >= 0).all()
    centres = uniform_test_indices(num_frames, clip_len, 1)[0]
    expected = np.minimum((np.arange(clip_len) * segment + segment / 2).astype(int), num_frames - 1)
    assert np.array_equal(centres, expected)


def test_uniform_segments_cover_the_whole_video():
    idx = uniform_test_indices(160, 8, 1)[0]
    assert idx[0] < 20 and idx[-1] >= 140  # first and last segments are both sampled
    seen = set()
    for seed in range(200):
        seen.update(uniform_train_indices(160, 8, np.random.default_rng(seed))[0].tolist())
    assert len(seen) > 150  # random offsets reach (almost) every frame over many clips


def test_dispatch_and_bad_input():
    assert sample_indices(50, 8, "uniform", 16, train=False, num_clips=2).shape == (2, 8)
    with pytest.raises(ValueError, match="data.sampling"):
        sample_indices(50, 8, "random", 16, train=False)
    with pytest.raises(ValueError, match="at least one frame"):
        dense_test_indices(0, 8, 16, 1)
