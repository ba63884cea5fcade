"""The embedded image model: a small timm ViT pre-trained here, on single synthetic frames.

No model hub is reachable on the machines this project is built and tested on, yet AIM needs a
*pre-trained* frozen image model. `aimfl pretrain-image` makes one, honestly labelled as such: a
timm ViT trained for a few CPU-minutes to recognise what a single frame of the synthetic world
shows: the object's shape and colour, where it is, how big and how opaque it is, and the site
(background). Nothing about motion: every label is read off one frame. AIM then has to learn
time itself, on top of the frozen features.

The weights are saved with `torch.save(model.state_dict())`, timm's own checkpoint format, and
the synthetic config loads them through `model.backbone.checkpoint` exactly like any other
pre-trained timm ViT. A JSON card beside the file records how they were made.
"""

from __future__ import annotations

import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler

from aim_core.data.synthetic import (
    CLASSES,
    COLOURS,
    MOTION_SHAPES,
    SITE_BACKGROUNDS,
    object_track,
    render_frame,
    sample_spec,
)
from aim_core.engine.checkpoint import atomic_write
from aim_core.model.backbones import build_timm_model

SHAPES = list(MOTION_SHAPES) + [name for name, _ in CLASSES[6:]]
# attribute -> number of classes; position, size and opacity are binned
ATTRIBUTES = {"shape": len(SHAPES), "colour": len(COLOURS), "x": 5, "y": 5, "size": 4, "opacity": 3,
              "site": len(SITE_BACKGROUNDS)}
IGNORE = -100


def _bin(value: float, low: float, high: float, bins: int) -> int:
    return int(np.clip((value - low) / (high - low) * bins, 0, bins - 1))


def make_frames(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random frames (uint8, N x 3 x size x size) and their attribute labels (N x attributes)."""
    rng = np.random.default_rng(seed)
    sites = len(SITE_BACKGROUNDS)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    labels = np.empty((count, len(ATTRIBUTES)), dtype=np.int64)
    for i in range(count):
        spec = sample_spec(int(rng.integers(len(CLASSES))), rng, sites)
        state = object_track(spec, 16)[int(rng.integers(16))]
        images[i] = render_frame(spec, state, size)
        x, y, radius, alpha = state
        visible = alpha >= 0.25  # a nearly transparent object has no readable shape or colour
        labels[i] = [SHAPES.index(spec.shape) if visible else IGNORE, spec.colour if visible else IGNORE,
                     _bin(x, 0.0, 1.0, 5), _bin(y, 0.0, 1.0, 5), _bin(radius, 0.05, 0.26, 4),
                     _bin(alpha, 0.0, 1.0001, 3), spec.site]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def attribute_slices(logits: torch.Tensor):
    """(name, logits of that attribute, column of the label) for every attribute."""
    start = 0
    for k, (name, classes) in enumerate(ATTRIBUTES.items()):
        yield name, logits[:, start:start + classes], k
        start += classes


def attribute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(part, labels[:, k], ignore_index=IGNORE) for _, part, k in attribute_slices(logits))


def attribute_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    accuracy = {}
    for name, part, k in attribute_slices(logits):
        valid = labels[:, k] != IGNORE
        accuracy[name] = (part[valid].argmax(1) == labels[valid, k]).float().mean().item()
    return accuracy


def pretrain_image_model(cfg, out: str, progress: bool = True) -> dict:
    """Trains the backbone of `cfg.model` on synthetic frames and saves it in timm format to `out`."""
    from tqdm import tqdm

    p = cfg.image_pretrain
    torch.manual_seed(p.seed)
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.checkpoint = None
    backbone_cfg.pretrained = None
    model = build_timm_model(backbone_cfg, img_size=cfg.model.image_size)
    model.reset_classifier(sum(ATTRIBUTES.values()))
    size = cfg.model.image_size
    mean = torch.tensor(list(cfg.model.backbone.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.model.backbone.std)).view(1, 3, 1, 1)

    def normalise(images):
        return (images.float() / 255 - mean) / std

    train_x, train_y = make_frames(p.train_frames, size, p.seed)
    val_x, val_y = make_frames(p.val_frames, size, p.seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=p.steps - p.warmup_steps, warmup_t=p.warmup_steps,
                                  warmup_prefix=True, t_in_epochs=False)
    gen = torch.Generator().manual_seed(p.seed)
    start, history = time.time(), []
    model.train()
    bar = tqdm(range(p.steps), desc="pre-training the image model", disable=not progress)
    for step in bar:
        idx = torch.randint(len(train_x), (p.batch_size,), generator=gen)
        logits = model(normalise(train_x[idx]))
        loss = attribute_loss(logits, train_y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        if step % 50 == 0 or step == p.steps - 1:
            acc = attribute_accuracy(logits, train_y[idx])
            history.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}", shape=f"{acc['shape']:.2f}", x=f"{acc['x']:.2f}")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(normalise(chunk)) for chunk in val_x.split(512)])
        val_loss, val_acc = attribute_loss(logits, val_y), attribute_accuracy(logits, val_y)
    card = {
        "what": "timm ViT pre-trained locally on single frames of the aimfl synthetic world (not a public checkpoint)",
        "labels": {name: classes for name, classes in ATTRIBUTES.items()},
        "timm_model": cfg.model.backbone.name,
        "overrides": dict(cfg.model.backbone.overrides),
        "image_size": size,
        "steps": p.steps,
        "batch_size": p.batch_size,
        "seed": p.seed,
        "train_seconds": round(time.time() - start, 1),
        "val_loss": round(val_loss.item(), 4),
        "val_accuracy": {k: round(v, 4) for k, v in val_acc.items()},
        "loss_history": history,
    }
    model.reset_classifier(0)  # the attribute head is not part of the backbone
    atomic_write(out, lambda tmp: torch.save(model.state_dict(), tmp))
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(card, f, indent=2)
    return card
