"""The embedded image model's pre-training images, and the transfer benchmark's motion worlds."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

import aimfl.pretrain_image as pretrain
from aim_core.data.procedural import BACKGROUNDS, GEOMETRY, IMAGE_FLAGS, IMAGE_LABELS, figure_geometry, render_batch

ROOT = Path(__file__).resolve().parent.parent


def test_the_same_seed_draws_the_same_images_and_another_seed_others():
    a, b, c = render_batch(20, 64, 8, 3), render_batch(20, 64, 8, 3), render_batch(20, 64, 8, 4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.image_labels, b.image_labels)
    assert not np.array_equal(a.images, c.images)


def test_labels_describe_what_the_image_shows():
    batch = render_batch(300, 64, 8, 0)
    count, background = batch.image_labels[:, 0], batch.image_labels[:, 1]
    shapes = batch.image_labels[:, len(IMAGE_LABELS):len(IMAGE_LABELS) + IMAGE_FLAGS["shapes"]]
    assert set(background) == set(range(len(BACKGROUNDS)))  # every background kind is drawn
    assert (shapes.sum(1) <= count).all()  # no more distinct shapes than objects
    empty = count == 0
    assert empty.any() and not batch.object_masks[empty].any()  # no object, no figure pixel
    assert batch.object_masks[~empty].any(axis=(1, 2)).all()
    # patch labels: an object patch (class > 0) lies on a figure pixel at the patch centre
    centres = batch.object_masks[:, 4::8, 4::8]
    assert np.array_equal(batch.patch_labels[:, 0] > 0, centres)
    np.testing.assert_allclose(batch.figure_geometry[empty], [[0.5, 0.5] + [0.0] * (len(GEOMETRY) - 2)] * empty.sum())


def test_figure_geometry_follows_the_figure():
    coords = (np.arange(64) + 0.5) / 64
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    mask = (np.abs(xx - 0.25) < 0.1) & (np.abs(yy - 0.75) < 0.05)  # a wide bar at the lower left
    g = dict(zip(GEOMETRY, figure_geometry(mask, yy, xx)))
    assert g["x"] == pytest.approx(0.25, abs=0.01) and g["y"] == pytest.approx(0.75, abs=0.01)
    assert g["size"] == pytest.approx(np.sqrt(mask.mean()))
    assert g["spread_x"] > 1.5 * g["spread_y"]
    turned = figure_geometry(mask.T, yy, xx)  # the same bar mirrored about the diagonal: upright
    assert dict(zip(GEOMETRY, turned))["spread_y"] == pytest.approx(g["spread_x"])


def motion_worlds():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import motion_worlds

    return motion_worlds


def test_the_transfer_worlds_share_no_code_with_the_pre_training_data_or_the_demo_world():
    tree = ast.parse((ROOT / "benchmarks" / "motion_worlds.py").read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.split(".")[0] in ("aim_core", "aimfl") for m in modules), modules


@pytest.mark.parametrize("world", ["direction", "rotation", "approach", "speed", "swap"])
def test_each_world_moves_and_its_classes_show_the_same_frames_in_another_order(world):
    worlds = motion_worlds()
    make, classes, bound = worlds.WORLDS[world]
    clips = [np.stack(make(np.random.default_rng(0), label)) for label in range(len(classes))]
    assert clips[0].shape == (worlds.FRAMES, worlds.SIZE, worlds.SIZE, 3)
    assert np.abs(np.diff(clips[0], axis=0)).mean() > 0.5  # something moves
    # the same draw of every class of a group holds the same frames, reordered: a frame average cannot tell them apart
    groups = []
    for clip in clips:
        mean = clip.mean(0)
        if not any(np.allclose(mean, other) for other in groups):
            groups.append(mean)
    assert bound == len(groups) / len(classes)


def test_a_worlds_odd_class_is_its_even_class_played_backwards(tmp_path):
    import decord

    worlds = motion_worlds()
    card = worlds.make_world(str(tmp_path), "approach", train=4, val=2, seed=0)
    assert card["frame_averaging_bound"] == 0.5
    lines = [line.split() for line in (tmp_path / "train.txt").read_text().splitlines()]
    assert sorted(int(label) for _, label in lines) == [0, 0, 1, 1]
    # the same generator draw, played backwards, is the odd class: recede is approach reversed
    sizes = {}
    for path, label in lines:
        video = decord.VideoReader(str(tmp_path / path)).get_batch(list(range(16))).asnumpy().astype(float)
        change = np.abs(video - np.median(video, 0)).sum(-1) > 60
        sizes.setdefault(int(label), []).append(change[0].sum() < change[-1].sum())  # the ball grows
    assert all(sizes[0]) and not any(sizes[1])


def test_the_embedded_model_cache_is_keyed_by_its_recipe(tiny_cfg, tmp_path, monkeypatch):
    trained = []

    def fake_pretrain(cfg, out, progress=True):
        trained.append(cfg.image_pretrain.steps)
        card = {"recipe": pretrain.recipe_of(cfg), "train_seconds": 1.0, "val_loss": 0.0, "val_accuracy": {}}
        (tmp_path / "vit.pth").write_bytes(b"weights")
        (tmp_path / "vit.json").write_text(json.dumps(card))
        return card

    monkeypatch.setattr(pretrain, "pretrain_image_model", fake_pretrain)
    out = str(tmp_path / "vit.pth")
    assert pretrain.ensure_image_model(tiny_cfg("synthetic"), out)[1] is True
    assert pretrain.ensure_image_model(tiny_cfg("synthetic"), out)[1] is False  # the same recipe: cached
    assert pretrain.ensure_image_model(tiny_cfg("synthetic", "image_pretrain.steps=7"), out)[1] is True  # another
    assert pretrain.ensure_image_model(tiny_cfg("synthetic", "image_pretrain.steps=7"), out, force=True)[1] is True
    assert trained == [1400, 7, 7]


def test_weights_of_ones_own_are_never_pre_trained_over(tiny_cfg, tmp_path, monkeypatch, capsys):
    """A checkpoint that `aimfl pretrain-image` did not make (no card beside it) is someone's own weights: the demo
    and local-federation use it as it is, and pretrain-image refuses to overwrite it unless forced."""
    from aimfl.cli import main
    from aimfl.staging import prepare_backbone

    monkeypatch.setattr(pretrain, "pretrain_image_model", lambda *args, **kwargs: pytest.fail("pre-trained over"))
    own = tmp_path / "own.pth"
    own.write_bytes(b"someone's weights")
    prepare_backbone(tiny_cfg("synthetic", f"model.backbone.checkpoint={own}"))
    assert "not the embedded model, used as it is" in capsys.readouterr().out
    prepare_backbone(tiny_cfg("tiny_synthetic"))  # no checkpoint: the backbone's own (random) weights
    assert "model.backbone.checkpoint is not set" in capsys.readouterr().out

    assert main(["pretrain-image", "synthetic", "--out", str(own)]) == 2
    assert "did not make (no card" in capsys.readouterr().err
    assert own.read_bytes() == b"someone's weights"
    assert main(["pretrain-image", "tiny_synthetic"]) == 2  # no checkpoint in the config and no --out
    assert "model.backbone.checkpoint is not set in tiny_synthetic: give --out" in capsys.readouterr().err


def test_the_order_probe_reads_order_from_frames_in_order_and_not_from_their_average():
    """Two classes that differ in the order of their frames only: a figure moves one way along a direction in one
    class and the other way in the other. Read in order the frames tell them apart; their average cannot
    (benchmarks/order_probe.py)."""
    motion_worlds()  # puts benchmarks/ on the path
    import torch
    from order_probe import logistic_regression

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(80) % 2
    way = torch.tensor([[-1.0, 1.0], [1.0, -1.0]])[labels]  # (clips, frames): where the figure is along the direction
    direction = torch.randn(16, generator=generator)
    clips = torch.randn(80, 2, 16, generator=generator) + way[..., None] * direction
    train, val = slice(0, 60), slice(60, 80)
    in_order = logistic_regression(clips[train].flatten(1), labels[train], clips[val].flatten(1), labels[val], 0.01)
    averaged = logistic_regression(clips[train].mean(1), labels[train], clips[val].mean(1), labels[val], 0.01)
    assert in_order["val_top1"] == 1.0
    assert averaged["val_top1"] <= 0.75
