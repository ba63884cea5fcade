"""The embedded image model: a small timm ViT pre-trained here on procedural still images.

No model hub is reachable on the machines this project is built and tested on, yet AIM needs a *pre-trained*
frozen image model. `aimfl pretrain-image` makes one, honestly labelled as such: a timm ViT trained for a few
CPU-minutes on `aim_core.data.procedural` images (six kinds of background, up to four occluding objects of ten
shapes), to read off what a still image shows. Its [class] token learns how many objects there are, the background
kind, which shapes, hues and cells of a 4x4 grid are present, and the geometry of the figure (the union of the
visible objects: centroid, size, spread, angular moments); each patch token learns the shape and hue of what covers
its centre, where that object's centre lies, and which of its pixels belong to an object. With
`image_pretrain.mask_ratio > 0`, that fraction of the patches is hidden (set to the mean colour) and their tokens
also learn to restore the hidden pixels. No label is about motion: AIM learns time itself.

The weights are saved with `torch.save(model.state_dict())`, timm's own checkpoint format, and the configs load them
through `model.backbone.checkpoint` exactly like any other pre-trained timm ViT. A JSON card beside the file records
the recipe and the held-out accuracy of every label, read by the linear heads the features were trained with.
"""

from __future__ import annotations

import copy
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from timm.scheduler import CosineLRScheduler
from torch import nn

from aim_core.config import progress_options
from aim_core.data.procedural import GEOMETRY, IMAGE_FLAGS, IMAGE_LABELS, PATCH_LABELS, VERSION, Batch, render_batch
from aim_core.engine.checkpoint import atomic_write
from aim_core.model.backbones import build_timm_model

RENDER_CHUNK = 2000  # images per rendering job: the images depend on the seed only, not on the workers


def render_images(count: int, size: int, patch: int, seed: int, workers: int) -> Batch:
    """`count` procedural images and labels, rendered in parallel chunks seeded by (seed, chunk)."""
    sizes = [min(RENDER_CHUNK, count - start) for start in range(0, count, RENDER_CHUNK)]
    jobs = [(n, size, patch, [seed, chunk]) for chunk, n in enumerate(sizes)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(render_batch, *zip(*jobs)))
    return Batch(*(np.concatenate([getattr(part, field) for part in parts]) for field in Batch.__dataclass_fields__))


class PretrainHeads(nn.Module):
    """Linear read-outs of the backbone's tokens: image labels and flags from the [class] token, patch labels and
    (with masking) the hidden pixels from each patch token. They train with the backbone and are not saved with it."""

    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.image = nn.Linear(dim, sum(IMAGE_LABELS.values()) + sum(IMAGE_FLAGS.values()))
        self.geometry = nn.Linear(dim, len(GEOMETRY))
        self.patch = nn.Linear(dim, sum(PATCH_LABELS.values()))
        self.mask = nn.Linear(dim, patch * patch)
        self.pixels = nn.Linear(dim, patch * patch * 3)

    def forward(self, tokens: torch.Tensor):
        patches = tokens[:, 1:]
        return (self.image(tokens[:, 0]), self.geometry(tokens[:, 0]), self.patch(patches), self.mask(patches),
                self.pixels(patches))


def split_logits(logits: torch.Tensor, labels: dict[str, int]):
    """(name, logits of that label) for every label of `labels`, in order along the last dimension."""
    start = 0
    for name, classes in labels.items():
        yield name, logits[..., start : start + classes]
        start += classes


def read_outs(image_logits, patch_logits, image_labels, patch_labels):
    """(name, kind, logits, targets) of every label: 'class' (one of several), 'flags' (any of several) or 'patch'
    (one of several per patch, class 0 the background)."""
    classes = len(IMAGE_LABELS)
    for column, (name, part) in enumerate(split_logits(image_logits[:, : sum(IMAGE_LABELS.values())], IMAGE_LABELS)):
        yield name, "class", part, image_labels[:, column]
    flags = image_labels[:, classes:].float()
    for (name, part), (_, target) in zip(split_logits(image_logits[:, sum(IMAGE_LABELS.values()):], IMAGE_FLAGS),
                                         split_logits(flags, IMAGE_FLAGS)):
        yield name, "flags", part, target
    for column, (name, part) in enumerate(split_logits(patch_logits, PATCH_LABELS)):
        yield name, "patch", part.flatten(0, 1), patch_labels[:, column].flatten()


def label_loss(*outputs_and_labels) -> torch.Tensor:
    """The mean over every label of its cross-entropy (binary cross-entropy for flags)."""
    losses = [F.binary_cross_entropy_with_logits(part, target) if kind == "flags" else F.cross_entropy(part, target)
              for _, kind, part, target in read_outs(*outputs_and_labels)]
    return torch.stack(losses).mean()


def label_accuracy(*outputs_and_labels) -> dict[str, float]:
    """Accuracy of every label (of every flag, for flags; for patch labels, on the patches an object covers, which
    object answer the head ranks first, since background patches outnumber them and the background answer would win
    almost everywhere), and beside it the accuracy of always guessing the most frequent answer (`<name>_chance`)."""
    accuracy = {}
    for name, kind, part, target in read_outs(*outputs_and_labels):
        if kind == "patch":
            part, target = part[target > 0, 1:], target[target > 0] - 1
        if kind != "flags":
            accuracy[name] = (part.argmax(-1) == target).float().mean().item()
            accuracy[f"{name}_chance"] = target.bincount().max().item() / len(target)
        else:
            accuracy[name] = ((part > 0).float() == target).float().mean().item()
            accuracy[f"{name}_chance"] = torch.maximum(target.mean(0), 1 - target.mean(0)).mean().item()
    return accuracy


def recipe_of(cfg) -> dict:
    """What makes the embedded image model what it is: the backbone's shape, the pre-training settings and the
    version of the images it learns from."""
    return {"images_version": VERSION, "timm_model": cfg.model.backbone.name,
            "overrides": dict(cfg.model.backbone.overrides), "image_size": cfg.model.image_size,
            **{key: cfg.image_pretrain[key] for key in cfg.image_pretrain}}


def card_path(out: str) -> str:
    """The JSON card saved beside an embedded image model's weights file."""
    return os.path.splitext(out)[0] + ".json"


def is_foreign_weights(out: str) -> bool:
    """Whether `out` holds weights that `aimfl pretrain-image` did not make (no card beside them): someone's own
    checkpoint, used as it is and never pre-trained over."""
    return os.path.isfile(out) and not os.path.isfile(card_path(out))


def cached_card(cfg, out: str) -> dict | None:
    """The card of the image model at `out` if it was made by this config's recipe (None: missing or stale)."""
    if not (os.path.isfile(out) and os.path.isfile(card_path(out))):
        return None
    with open(card_path(out)) as f:
        card = json.load(f)
    return card if card.get("recipe") == recipe_of(cfg) else None


def ensure_image_model(cfg, out: str, force: bool = False, progress: bool = True) -> tuple[dict, bool]:
    """(the card, whether it was trained now): the embedded image model at `out`, pre-trained unless the cache
    holds one made by the same recipe. A weights file there that this command did not make is not overwritten
    (FileExistsError) unless `force`."""
    card = None if force else cached_card(cfg, out)
    if card is not None:
        return card, False
    if is_foreign_weights(out) and not force:
        raise FileExistsError(f"{out} holds weights that `aimfl pretrain-image` did not make (no card "
                              f"{card_path(out)}): not overwritten; give another path, or --force")
    if os.path.isfile(out) and not force:
        print(f"{out} was made by another recipe: pre-training it again", flush=True)
    return pretrain_image_model(cfg, out, progress), True


def pretrain_image_model(cfg, out: str, progress: bool = True) -> dict:
    """Trains the backbone of `cfg.model` on procedural images and saves it in timm format to `out`."""
    from tqdm import tqdm

    p = cfg.image_pretrain
    started = time.time()
    torch.manual_seed(p.seed)
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.checkpoint = None
    backbone_cfg.pretrained = None
    model = build_timm_model(backbone_cfg, img_size=cfg.model.image_size)
    model.reset_classifier(0)
    size, patch = cfg.model.image_size, model.patch_embed.patch_size[0]
    heads = PretrainHeads(model.embed_dim, patch)
    mean = torch.tensor(list(cfg.model.backbone.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(cfg.model.backbone.std)).view(1, 3, 1, 1)

    workers = min(2, os.cpu_count() or 1)
    train = render_images(p.train_images, size, patch, p.seed, workers)
    val = render_images(p.val_images, size, patch, p.seed + 1, workers)
    render_seconds = time.time() - started

    def tensors(batch: Batch, index):
        images = torch.from_numpy(batch.images[index]).permute(0, 3, 1, 2).float().div_(255).sub_(mean).div_(std)
        masks = rearrange(torch.from_numpy(batch.object_masks[index]).float(), "b (h p) (w q) -> b (h w) (p q)",
                          p=patch, q=patch)
        return (images, torch.from_numpy(batch.image_labels[index]), torch.from_numpy(batch.patch_labels[index]), masks,
                torch.from_numpy(batch.figure_geometry[index]))

    def masked(images: torch.Tensor, generator: torch.Generator | None):
        """Hides `mask_ratio` of the patches (0 after normalisation: the mean colour); the mask is (B, patches)."""
        grid = size // patch
        mask = torch.rand(images.shape[0], grid * grid, generator=generator) < p.mask_ratio
        pixel_mask = rearrange(mask, "b (h w) -> b 1 h w", h=grid).repeat_interleave(patch, 2).repeat_interleave(
            patch, 3)
        return images.masked_fill(pixel_mask, 0.0), mask

    def objective(images, image_labels, patch_labels, object_masks, geometry, generator=None, hide=True):
        shown, mask = masked(images, generator) if hide and p.mask_ratio > 0 else (images, None)
        image_logits, geometry_out, patch_logits, mask_logits, pixels = heads(model.forward_features(shown))
        loss = p.label_weight * label_loss(image_logits, patch_logits, image_labels, patch_labels)
        if p.figure_weight > 0:
            loss = loss + p.figure_weight * (F.binary_cross_entropy_with_logits(mask_logits, object_masks)
                                             + 10 * F.mse_loss(geometry_out, geometry))
        if mask is not None and mask.any():
            target = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)
            loss = loss + p.reconstruction_weight * F.mse_loss(pixels[mask], target[mask])
        figure = ((mask_logits > 0) == (object_masks > 0)).float().mean()
        geometry_r2 = 1 - (geometry_out - geometry).square().sum(0) / (geometry - geometry.mean(0)).square().sum(0)
        return loss, image_logits, patch_logits, figure, geometry_r2

    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=p.steps - p.warmup_steps, warmup_t=p.warmup_steps,
                                  warmup_prefix=True, t_in_epochs=False)
    generator = torch.Generator().manual_seed(p.seed)
    history = []
    model.train()
    bar = tqdm(range(p.steps), desc="pre-training the image model", **progress_options(progress))
    for step in bar:
        index = torch.randint(p.train_images, (p.batch_size,), generator=generator).numpy()
        loss, *_ = objective(*tensors(train, index), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        if step % 50 == 0 or step == p.steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        parts = [objective(*tensors(val, np.arange(start, min(start + 500, p.val_images))), hide=False)
                 for start in range(0, p.val_images, 500)]
        val_loss = float(np.mean([loss.item() for loss, *_ in parts]))
        logits = [torch.cat([part[i] for part in parts]) for i in (1, 2)]
        val_accuracy = label_accuracy(*logits, *tensors(val, np.arange(p.val_images))[1:3])
        val_accuracy["figure_pixels"] = float(np.mean([part[3].item() for part in parts]))
        val_accuracy["figure_pixels_chance"] = 1 - float(val.object_masks.mean())
        r2 = torch.stack([part[4] for part in parts]).mean(0)
        val_accuracy.update({f"figure_{name}_r2": value.item() for name, value in zip(GEOMETRY, r2)})
    card = {
        "what": "timm ViT pre-trained locally on procedural still images (aim_core.data.procedural); "
                "not a public checkpoint",
        "labels": {"image": IMAGE_LABELS, "image_flags": IMAGE_FLAGS, "patch": PATCH_LABELS},
        "recipe": recipe_of(cfg),
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.time() - started, 1),
        "val_loss": round(val_loss, 4),
        "val_accuracy": {k: round(v, 4) for k, v in val_accuracy.items()},
        "loss_history": history,
    }
    atomic_write(out, lambda tmp: torch.save(model.state_dict(), tmp))
    with open(card_path(out), "w") as f:
        json.dump(card, f, indent=2)
    return card
