"""The synthetic world: deterministic, real H.264, order-only pairs really reversed."""

import hashlib
import os

import decord
import numpy as np
import pytest

from aim_core.data.synthetic import CLASS_NAMES, make_synthetic, order_pairs, render_frames, sample_spec


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    kwargs = dict(train_per_class=2, val_per_class=1, progress=False)
    make_synthetic(str(tmp_path / "a"), seed=5, **kwargs)
    make_synthetic(str(tmp_path / "b"), seed=5, **kwargs)
    make_synthetic(str(tmp_path / "c"), seed=6, **kwargs)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_order_only_pairs_are_the_same_frames_reversed():
    pairs = order_pairs()
    assert 2 * len(pairs) >= len(CLASS_NAMES) / 2  # at least half the classes are order-only
    rng = np.random.default_rng(0)
    for forward, backward in pairs:
        for _ in range(3):
            spec = sample_spec(forward, rng, sites=4)
            reversed_spec = type(spec)(**{**spec.__dict__, "label": backward})
            a, b = render_frames(spec, 64, 16), render_frames(reversed_spec, 64, 16)
            assert np.array_equal(a[::-1], b)
            assert not np.array_equal(a, b)  # the frames do change over time


def test_files_are_decodable_h264_with_the_rendered_content(tmp_path):
    make_synthetic(str(tmp_path), seed=1, train_per_class=1, val_per_class=1, progress=False)
    lines = open(tmp_path / "train.txt").read().split("\n")
    path, label, site = lines[0].split()
    assert site.startswith("site") and f"/{site}/" in path
    reader = decord.VideoReader(str(tmp_path / path))
    assert len(reader) == 16 and reader[0].shape == (64, 64, 3)
    import av

    with av.open(str(tmp_path / path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert open(tmp_path / "classes.txt").read().split() == CLASS_NAMES


@pytest.mark.slow
def test_tqdm_disable_hides_every_progress_bar(tmp_path, monkeypatch):
    """tqdm reads TQDM_DISABLE only for arguments not given: aimfl passes `disable` only to hide a bar."""
    from helpers import aimfl

    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # the suite itself may run with bars hidden
    shown = aimfl("make-synthetic", str(tmp_path / "a"), "--train-per-class", "1", "--val-per-class", "1")
    hidden = aimfl("make-synthetic", str(tmp_path / "b"), "--train-per-class", "1", "--val-per-class", "1",
                   env={"TQDM_DISABLE": "1"})
    assert "synthetic clips" in shown.stderr and "synthetic clips" not in hidden.stderr
