"""Procedural still images for pre-training the embedded image model, far wider than any video world it is used on.

Every image has one of six backgrounds (plain, gradient, smooth noise, blocks, stripes, fractal noise) and zero to
four objects drawn over it in a random order, so later objects occlude earlier ones. An object has one of ten shapes,
a hue, a size, a rotation, a position anywhere in the frame, a fill (solid or two-tone) and an opacity. Its labels say
what one still image shows, nothing about motion:

- image labels: how many objects are visible and the background kind (one class each), and which shapes, which
  hues and which cells of a 4x4 grid over the frame hold a visible object (any number of each);
- patch labels, on the model's patch grid: the shape and the hue of the object on top at each patch's centre, and
  where that object's centre lies from the patch, in patches (background is class 0 of each);
- object masks: which pixels belong to a visible object (figure) and which to the background (ground), and the
  figure's centroid and size.

`render_batch` draws images and their labels for a seed, deterministically; nothing here is shared with the
synthetic video world (`aim_core.data.synthetic`) or with the transfer benchmark's worlds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bumped whenever what `render_batch` draws changes: the embedded image model's cache is keyed by it.
VERSION = 2
SHAPES = ("square", "disc", "triangle", "ring", "cross", "star", "ellipse", "diamond", "hexagon", "bar")
BACKGROUNDS = ("plain", "gradient", "noise", "blocks", "stripes", "fractal")
MAX_OBJECTS = 4
# Easy images are drawn more often than hard ones (a plain or graded background, one object): a small ViT trained for
# minutes learns what objects are, and where, much sooner from them, and the textured, crowded rest generalises it.
BACKGROUND_ODDS = (0.3, 0.2, 0.125, 0.125, 0.125, 0.125)  # in the order of BACKGROUNDS
COUNT_ODDS = (0.1, 0.4, 0.2, 0.15, 0.15)  # 0..MAX_OBJECTS objects
HUE_BINS, GRID, OFFSET_BINS = 8, 4, 5
# image label -> classes, one class per image (the first columns of `Batch.image_labels`)
IMAGE_LABELS = {"count": MAX_OBJECTS + 1, "background": len(BACKGROUNDS)}
# image label -> flags, any number of them set per image (the remaining columns, 0 or 1)
IMAGE_FLAGS = {"shapes": len(SHAPES), "hues": HUE_BINS, "occupied_cells": GRID * GRID}
# patch label -> classes, class 0 the background
PATCH_LABELS = {"patch_shape": len(SHAPES) + 1, "patch_hue": HUE_BINS + 1, "patch_offset_x": OFFSET_BINS + 1,
                "patch_offset_y": OFFSET_BINS + 1}
# What the figure (the union of the visible objects) looks like as a whole, whatever its shape: where it is, how big,
# how spread along each axis, and its angular moments about its centroid (they turn as the figure turns).
ANGULAR_ORDERS = (2, 3, 4)  # order 1 is about zero about the centroid
GEOMETRY = ("x", "y", "size", "spread_x", "spread_y", "correlation",
            *(f"angular_{part}{k}" for k in ANGULAR_ORDERS for part in ("cos", "sin")))
MIN_VISIBLE_PIXELS = 6
RADIUS_RANGE = (0.05, 0.3)  # as fractions of the frame


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # uint8 (N, H, W, 3)
    image_labels: np.ndarray  # int64 (N, len(IMAGE_LABELS) + sum(IMAGE_FLAGS.values()))
    patch_labels: np.ndarray  # int64 (N, len(PATCH_LABELS), H / patch, W / patch)
    object_masks: np.ndarray  # bool (N, H, W): the pixels a visible object covers
    figure_geometry: np.ndarray  # float32 (N, len(GEOMETRY)): `figure_geometry` of each image's object mask


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return 255 * (v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1))


def value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random (cells+1)^2 grid, bilinearly interpolated to size x size."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def background(rng: np.random.Generator, kind: str, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if kind == "plain":
        mix = np.zeros((size, size))
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        mix = np.clip((np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)) * rng.uniform(1, 2) + 0.5, 0, 1)
    elif kind == "noise":
        mix = value_noise(rng, size, int(rng.integers(3, 17)))
    elif kind == "blocks":
        cells = int(rng.integers(2, 9))
        grid = rng.uniform(0, 255, (cells, cells, 3))
        index = (np.arange(size) * cells // size)
        return grid[index][:, index]
    elif kind == "stripes":
        angle, period = rng.uniform(0, np.pi), rng.uniform(0.05, 0.35)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) / period
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
        mix = wave if rng.random() < 0.5 else (wave > 0.5).astype(float)
    else:  # fractal: octaves of noise, each half the amplitude of the one before
        mix = sum(0.5**octave * value_noise(rng, size, 2 ** (octave + 1)) for octave in range(5))
        mix = (mix - mix.min()) / max(np.ptp(mix), 1e-6)
    return a + mix[..., None] * (b - a)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside `shape` of radius r, in the object's rotated coordinates (u, v)."""
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
    if shape == "disc":
        return rho <= r
    if shape == "ring":
        return (rho <= r) & (rho >= 0.55 * r)
    if shape == "cross":
        return ((np.abs(u) <= r / 3) & (np.abs(v) <= r)) | ((np.abs(v) <= r / 3) & (np.abs(u) <= r))
    if shape == "star":
        return rho <= r * (0.6 + 0.4 * np.cos(5 * phi))
    if shape == "ellipse":
        return (u / r) ** 2 + (v / (0.5 * r)) ** 2 <= 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= r
    if shape == "bar":
        return (np.abs(u) <= r) & (np.abs(v) <= 0.25 * r)
    sides = {"triangle": 3, "hexagon": 6}[shape]  # a regular polygon: inside every edge's half-plane
    sector = 2 * np.pi / sides
    local = (phi % sector) - sector / 2
    return rho * np.cos(local) <= r * np.cos(sector / 2)


def render_image(rng: np.random.Generator, size: int, patch: int, yy: np.ndarray, xx: np.ndarray):
    """One image, its image labels and its patch labels."""
    kind = int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_ODDS))
    image = background(rng, BACKGROUNDS[kind], size, yy, xx)
    owner = np.full((size, size), -1)  # index of the object on top of each pixel
    objects = []
    for index in range(int(rng.choice(MAX_OBJECTS + 1, p=COUNT_ODDS))):
        shape = int(rng.integers(len(SHAPES)))
        hue = rng.random()
        radius = float(np.exp(rng.uniform(*np.log(RADIUS_RANGE))))
        cx, cy, angle = rng.uniform(0.05, 0.95), rng.uniform(0.05, 0.95), rng.uniform(0, 2 * np.pi)
        colour = hsv_to_rgb(hue, rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        two_tone, frequency = rng.random() < 0.3, rng.uniform(6, 14)
        alpha = 1.0 if rng.random() < 0.8 else rng.uniform(0.5, 1.0)
        objects.append((shape, hue, cx, cy, radius, angle))
        # only the object's bounding box is drawn: most objects cover a small part of the frame
        rows, cols = box(cy, radius, size), box(cx, radius, size)
        dx, dy = xx[rows, cols] - cx, yy[rows, cols] - cy
        u, v = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
        mask = shape_mask(SHAPES[shape], u, v, radius)
        # two-tone fill: stripes across the object, in a darker shade
        fill = np.where((np.sin(u / radius * frequency) > 0)[..., None], colour, 0.5 * colour) if two_tone else colour
        region = image[rows, cols]
        region[mask] = ((1 - alpha) * region + alpha * fill)[mask]
        owner[rows, cols][mask] = index
    image = np.clip(image + rng.normal(0, rng.uniform(0, 6)), 0, 255).astype(np.uint8)

    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(objects))
    shown = [i for i, pixels in enumerate(visible) if pixels >= MIN_VISIBLE_PIXELS]
    shapes, hues = np.zeros(len(SHAPES), np.int64), np.zeros(HUE_BINS, np.int64)
    for i in shown:
        shapes[objects[i][0]] = hues[hue_bin(objects[i][1])] = 1
    cell = size // GRID
    on_top = np.isin(owner, shown).reshape(GRID, cell, GRID, cell).sum(axis=(1, 3))
    occupied = (on_top >= MIN_VISIBLE_PIXELS // 2).astype(np.int64).ravel()
    labels = np.concatenate([[len(shown), kind], shapes, hues, occupied])

    # patch labels: the object on top at each patch centre, or the background entry that owner -1 indexes
    centres = owner[patch // 2 :: patch, patch // 2 :: patch]
    patch_y, patch_x = (yy[patch // 2 :: patch, patch // 2 :: patch], xx[patch // 2 :: patch, patch // 2 :: patch])
    per_object = np.array([[o[0] + 1, hue_bin(o[1]) + 1] for o in objects] + [[0, 0]])
    offset_x = offset_bins([o[2] for o in objects], patch_x, patch / size)
    offset_y = offset_bins([o[3] for o in objects], patch_y, patch / size)
    pick = np.where(centres >= 0, centres, 0)[None]
    patch_labels = np.stack([per_object[centres, 0], per_object[centres, 1],
                             np.where(centres >= 0, np.take_along_axis(offset_x, pick, 0)[0], 0),
                             np.where(centres >= 0, np.take_along_axis(offset_y, pick, 0)[0], 0)])
    figure = np.isin(owner, shown)
    return image, labels, patch_labels, figure, figure_geometry(figure, yy, xx)


def figure_geometry(figure: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The `GEOMETRY` of a boolean mask, in fractions of the frame: centroid, square root of the area, standard
    deviations along x and y and their correlation, and for each k of `ANGULAR_ORDERS` the radius-weighted mean of
    (cos k*phi, sin k*phi) about the centroid. An empty mask gives (0.5, 0.5, 0, ...)."""
    out = np.zeros(len(GEOMETRY), np.float32)
    out[:2] = 0.5
    if not figure.any():
        return out
    x, y = xx[figure], yy[figure]
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = dx.std(), dy.std()
    radius, angle = np.hypot(dx, dy), np.arctan2(dy, dx)
    moments = [f(k * angle) @ radius / max(radius.sum(), 1e-9) for k in ANGULAR_ORDERS for f in (np.cos, np.sin)]
    out[:] = [x.mean(), y.mean(), np.sqrt(figure.mean()), sx, sy, (dx @ dy) / len(dx) / max(sx * sy, 1e-9), *moments]
    return out


def hue_bin(hue: float) -> int:
    return int(hue * HUE_BINS) % HUE_BINS


def offset_bins(object_centres: list[float], patch_centres: np.ndarray, patch: float) -> np.ndarray:
    """(objects, rows, cols) classes 1..OFFSET_BINS: how many patches each object's centre lies from each patch centre
    along one axis, rounded and clipped to +-(OFFSET_BINS // 2)."""
    if not object_centres:
        return np.zeros((1, *patch_centres.shape), np.int64)
    steps = np.rint((np.array(object_centres)[:, None, None] - patch_centres[None]) / patch)
    return (np.clip(steps, -(OFFSET_BINS // 2), OFFSET_BINS // 2) + OFFSET_BINS // 2 + 1).astype(np.int64)


def box(centre: float, radius: float, size: int) -> slice:
    """The pixel rows (or columns) within `radius` of `centre`, all as fractions of the frame."""
    return slice(max(int((centre - radius) * size) - 1, 0), min(int((centre + radius) * size) + 2, size))


def render_batch(count: int, size: int, patch: int, seed: int) -> Batch:
    """`count` images of size x size with their labels; the same seed gives the same images."""
    if size % patch:
        raise ValueError(f"image size {size} is not a multiple of the patch size {patch}")
    rng = np.random.default_rng(seed)
    coords = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    images = np.empty((count, size, size, 3), np.uint8)
    image_labels = np.empty((count, len(IMAGE_LABELS) + sum(IMAGE_FLAGS.values())), np.int64)
    patch_labels = np.empty((count, len(PATCH_LABELS), size // patch, size // patch), np.int64)
    object_masks = np.empty((count, size, size), bool)
    geometry = np.empty((count, len(GEOMETRY)), np.float32)
    for i in range(count):
        images[i], image_labels[i], patch_labels[i], object_masks[i], geometry[i] = render_image(
            rng, size, patch, yy, xx)
    return Batch(images, image_labels, patch_labels, object_masks, geometry)
