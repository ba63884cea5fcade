"""The synthetic world: small real H.264 videos whose classes need temporal reasoning.

Six of the ten classes are three order-only pairs, as in Something-Something: the second
class of a pair is the first one's frames in reverse order (moving right / left, growing /
shrinking, appearing / disappearing). A model that looks at frames independently and
averages them sees the same set of frames for both classes of a pair, so it is capped at
chance (50%) on them. The other four classes differ in appearance only (shapes the pairs
never use, jittering in place).

Every clip has a random shape colour, position and speed, and comes from one of a few
"sites" (background colour and texture), which are written as the list's group column and
in the path, so federated splits can group by site. Output is deterministic for a seed:

    OUT/videos/{train,val}/site{k}/clip_00000.mp4
    OUT/train.txt, OUT/val.txt   `path label site` lines, paths relative to OUT
    OUT/classes.txt              one class name per line
    OUT/synthetic.json           settings and the order-only class pairs
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from aim_core.config import ConfigError, progress_options

# (name, the class whose frames it reverses, or None)
CLASSES = [
    ("moving_right", None),
    ("moving_left", "moving_right"),
    ("growing", None),
    ("shrinking", "growing"),
    ("appearing", None),
    ("disappearing", "appearing"),
    ("ring", None),
    ("cross", None),
    ("stripes", None),
    ("two_dots", None),
]
CLASS_NAMES = [name for name, _ in CLASSES]
MOTION_SHAPES = ("square", "disc", "triangle")  # the shapes of the order-only pairs
COLOURS = np.array(
    [[230, 60, 50], [60, 200, 80], [70, 110, 240], [240, 210, 60], [220, 90, 220], [80, 220, 230]], dtype=np.float32
)
SITE_BACKGROUNDS = np.array([[30, 30, 40], [50, 35, 25], [25, 45, 35], [45, 45, 45], [20, 30, 55]], dtype=np.float32)


@dataclass(frozen=True)
class ClipSpec:
    label: int
    shape: str
    colour: int
    site: int
    x0: float  # start and end of the object's centre, as fractions of the frame
    x1: float
    y: float
    r0: float  # start and end radius, as fractions of the frame
    r1: float
    a0: float  # start and end opacity
    a1: float
    jitter_seed: int


def order_pairs() -> list[list[int]]:
    index = {name: i for i, name in enumerate(CLASS_NAMES)}
    return [[index[source], index[name]] for name, source in CLASSES if source]


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if shape == "cross":
        return ((np.abs(dx) <= r / 3) & (np.abs(dy) <= r)) | ((np.abs(dy) <= r / 3) & (np.abs(dx) <= r))
    if shape == "stripes":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r) & (np.floor((dy + r) / (r / 2.5)) % 2 == 0)
    if shape == "two_dots":
        return ((dx - r / 2) ** 2 + dy**2 <= (r / 2.2) ** 2) | ((dx + r / 2) ** 2 + dy**2 <= (r / 2.2) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def sample_spec(label: int, rng: np.random.Generator, sites: int) -> ClipSpec:
    name, source = CLASSES[label]
    kind = source or name
    shape = str(rng.choice(MOTION_SHAPES)) if label < 6 else name
    r = float(rng.uniform(0.1, 0.16))
    x, y = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))
    x0 = x1 = x
    r0 = r1 = r
    a0 = a1 = 1.0
    if kind == "moving_right":
        x0, x1 = float(rng.uniform(0.15, 0.35)), float(rng.uniform(0.65, 0.85))
    elif kind == "growing":
        r0, r1 = float(rng.uniform(0.05, 0.08)), float(rng.uniform(0.2, 0.26))
    elif kind == "appearing":
        a0, a1 = 0.0, 1.0
    return ClipSpec(label, shape, int(rng.integers(len(COLOURS))), int(rng.integers(sites)), x0, x1, y, r0, r1, a0, a1,
                    int(rng.integers(2**31)))


def object_track(spec: ClipSpec, frames: int) -> np.ndarray:
    """(T, 4): the object's centre x, centre y, radius and opacity in each frame (fractions of the frame).

    A class that reverses another has that class's track backwards.
    """
    source = CLASSES[spec.label][1]
    if source:
        return object_track(ClipSpec(**{**asdict(spec), "label": CLASS_NAMES.index(source)}), frames)[::-1].copy()
    f = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    track = np.stack([spec.x0 + (spec.x1 - spec.x0) * f, np.full(frames, spec.y),
                      spec.r0 + (spec.r1 - spec.r0) * f, spec.a0 + (spec.a1 - spec.a0) * f], axis=1)
    if spec.label >= 6:  # appearance classes wander in place; the pairs move only as their class says
        track[:, :2] += np.random.default_rng(spec.jitter_seed + 1).normal(0, 0.015, (frames, 2)).cumsum(axis=0)
    return track


def render_frame(spec: ClipSpec, state: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the clip's background with the object in `state` (x, y, radius, opacity)."""
    texture = np.random.default_rng(spec.jitter_seed).normal(0, 6, (size, size, 1)).astype(np.float32)
    background = SITE_BACKGROUNDS[spec.site % len(SITE_BACKGROUNDS)] + texture
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    cx, cy, radius, alpha = state
    mask = shape_mask(spec.shape, coords[None, :] - cx, coords[:, None] - cy, radius)[..., None]
    return np.clip(background + mask * alpha * (COLOURS[spec.colour] - background), 0, 255).astype(np.uint8)


def render_frames(spec: ClipSpec, size: int, frames: int) -> np.ndarray:
    """uint8 (T, size, size, 3)."""
    return np.stack([render_frame(spec, state, size) for state in object_track(spec, frames)])


def write_mp4(path: str, frames: np.ndarray, fps: int = 8) -> None:
    """Writes uint8 (T, H, W, 3) frames as H.264 (yuv420p) with PyAV."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        # Byte-identical output for a seed: one thread, timestamps set (x264's rate control reads them) and x264's
        # plain C code (asm=0): its SIMD code gave a different stream about once in 100 clips of the same frames.
        options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def _make_clip(job: tuple[str, ClipSpec, int, int]) -> None:
    path, spec, size, frames = job
    write_mp4(path, render_frames(spec, size, frames))


def make_synthetic(
    out: str,
    seed: int = 0,
    train_per_class: int = 24,
    val_per_class: int = 8,
    size: int = 64,
    frames: int = 16,
    sites: int = 4,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Writes the synthetic world to `out` (see the module doc); returns its summary."""
    from tqdm import tqdm

    if size % 2 or size < 32:
        raise ConfigError(f"--size {size}: the frame size must be even and at least 32")
    jobs, lists = [], {}
    for split_id, (split, per_class) in enumerate((("train", train_per_class), ("val", val_per_class))):
        rng = np.random.default_rng([seed, split_id])
        labels = rng.permutation(np.repeat(np.arange(len(CLASSES)), per_class))
        lines = []
        for i, label in enumerate(labels):
            spec = sample_spec(int(label), rng, sites)
            rel = f"videos/{split}/site{spec.site}/clip_{i:05d}.mp4"
            jobs.append((os.path.join(out, rel), spec, size, frames))
            lines.append(f"{rel} {int(label)} site{spec.site}\n")
        lists[split] = lines
    with ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(_make_clip, jobs, chunksize=8), total=len(jobs), desc="synthetic clips",
                  **progress_options(progress)))
    for split, lines in lists.items():
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, "classes.txt"), "w") as f:
        f.write("\n".join(CLASS_NAMES) + "\n")
    summary = {
        "seed": seed, "size": size, "frames": frames, "sites": sites,
        "train_clips": len(lists["train"]), "val_clips": len(lists["val"]),
        "classes": CLASS_NAMES, "order_pairs": order_pairs(),
    }
    with open(os.path.join(out, "synthetic.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
