"""Motion worlds for the transfer benchmark, written by generators that share no code with the image model's
pre-training data (`aim_core.data.procedural`) or with the demo's world (`aim_core.data.synthetic`).

In every world the classes differ only in the order of their frames: the frames of one class, shuffled, could be
those of another, so a model that looks at frames one at a time and averages them cannot beat the world's
frame-averaging bound (the share of classes it could still tell apart). Clips are 64x64, 16 frames, H.264.

- `direction`: a glyph (an L, a T, a plus or a bar) crosses a plaid background: right / left and down / up.
- `rotation`: a clock hand with a disc at its tip turns about a point near the centre over radial rings: one way /
  the other way.
- `approach`: a ball rolls over a sky-and-ground scene towards the viewer (lower and larger) / away from it.
- `speed`: a ring crosses a blotchy background in any direction, speeding up / slowing down.
- `swap`: two discs over a checkerboard trade places, one over the other's head: trade (the upper one goes right),
  the same played backwards (it goes left), trade and come back, and start traded, trade back and go again. All four
  classes show the same positions, so the bound is 25%.

In the first four worlds a class's clips are the clips of the other class of its pair played backwards, so the bound
is 50%.

    python benchmarks/motion_worlds.py OUT [--worlds direction rotation] [--train 160 --val 64]

writes OUT/<world>/{train.txt,val.txt,classes.txt,world.json,clips/...}.
"""

from __future__ import annotations

import argparse
import json
import os

import av
import numpy as np

SIZE, FRAMES, FPS = 64, 16, 10


def grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (y, x) in [0, 1]."""
    c = (np.arange(SIZE) + 0.5) / SIZE
    return np.meshgrid(c, c, indexing="ij")


def random_colour(rng: np.random.Generator, low: float = 0.0, high: float = 255.0) -> np.ndarray:
    return rng.uniform(low, high, 3)


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    canvas[mask] = colour


# ---------------------------------------------------------------------------------------------- direction
def plaid(rng, y, x):
    a = random_colour(rng, 60, 190)
    b = np.clip(a + rng.uniform(-60, 60, 3), 0, 255)  # a plaid of two nearby colours
    f1, f2 = rng.uniform(3, 9, 2)
    t = 0.5 + 0.25 * np.sin(2 * np.pi * f1 * x + rng.uniform(0, 6)) + 0.25 * np.sin(2 * np.pi * f2 * y)
    return a + t[..., None] * (b - a) + rng.normal(0, 8, (SIZE, SIZE, 1))


def contrasting(rng, background: np.ndarray) -> np.ndarray:
    """A colour far from the background's mean, so the object can be seen on it."""
    mean = background.reshape(-1, 3).mean(axis=0)
    return np.clip(np.where(mean > 128, mean - 110, mean + 110) + rng.uniform(-20, 20, 3), 0, 255)


def glyph(kind: int, dy, dx, s):
    bar_v = (np.abs(dx) < s / 4) & (np.abs(dy) < s)
    if kind == 0:  # L
        return bar_v | ((dy > s / 2) & (dy < s) & (dx > -s / 4) & (dx < s))
    if kind == 1:  # T
        return bar_v | ((dy < -s / 2) & (dy > -s) & (np.abs(dx) < s))
    if kind == 2:  # plus
        return bar_v | ((np.abs(dy) < s / 4) & (np.abs(dx) < s))
    return (np.abs(dx) < s) & (np.abs(dy) < s / 3)  # bar


def direction_clip(rng, label):
    y, x = grid()
    back = plaid(rng, y, x)
    colour = contrasting(rng, back)
    kind, s = int(rng.integers(4)), rng.uniform(0.1, 0.16)
    start, end, across = rng.uniform(0.1, 0.3), rng.uniform(0.7, 0.9), rng.uniform(0.25, 0.75)
    frames = []
    for t in np.linspace(0, 1, FRAMES):
        along = start + (end - start) * t
        cx, cy = (along, across) if label < 2 else (across, along)
        canvas = back.copy()
        paint(canvas, glyph(kind, y - cy, x - cx, s), colour)
        frames.append(canvas)
    return frames  # classes 0/1: right/left, 2/3: down/up


# ---------------------------------------------------------------------------------------------- rotation
def rings(rng, y, x):
    a = random_colour(rng, 60, 190)
    b = np.clip(a + rng.uniform(-60, 60, 3), 0, 255)
    r = np.hypot(y - rng.uniform(0.3, 0.7), x - rng.uniform(0.3, 0.7))
    return a + (0.5 + 0.5 * np.cos(2 * np.pi * r * rng.uniform(4, 10)))[..., None] * (b - a)


def rotation_clip(rng, label):
    y, x = grid()
    back = rings(rng, y, x)
    colour = contrasting(rng, back)
    length, cy, cx = rng.uniform(0.25, 0.34), *rng.uniform(0.42, 0.58, 2)
    angle0, step = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.3)  # radians per frame: 3 to 4.5 of 2 pi a clip
    frames = []
    for t in range(FRAMES):
        angle = angle0 + step * t
        tip_y, tip_x = cy + length * np.sin(angle), cx + length * np.cos(angle)
        # a clock hand: a thin bar from the hub to a disc at its tip
        along = np.clip(((y - cy) * np.sin(angle) + (x - cx) * np.cos(angle)) / length, 0, 1)
        bar = np.hypot(y - cy - along * length * np.sin(angle), x - cx - along * length * np.cos(angle)) < 0.025
        canvas = back.copy()
        paint(canvas, bar | (np.hypot(y - tip_y, x - tip_x) < 0.08) | (np.hypot(y - cy, x - cx) < 0.04), colour)
        frames.append(canvas)
    return frames


# ---------------------------------------------------------------------------------------------- approach
def scene(rng, y, x, horizon):
    sky, ground = random_colour(rng, 120, 255), random_colour(rng, 20, 140)
    canvas = np.where((y < horizon)[..., None], sky * (0.6 + 0.4 * y[..., None] / horizon), ground)
    lines = (y > horizon) & (np.sin(240 * np.sqrt(np.clip(y - horizon, 0, None))) > 0.6)  # furrows, denser far away
    canvas[lines] *= 0.75
    return canvas + rng.normal(0, 6, (SIZE, SIZE, 1))


def approach_clip(rng, label):
    y, x = grid()
    horizon = rng.uniform(0.3, 0.45)
    back, colour = scene(rng, y, x, horizon), random_colour(rng, 0, 255)
    x_far, x_near = rng.uniform(0.3, 0.7, 2)
    frames = []
    for t in np.linspace(0, 1, FRAMES):
        depth = 1 + 4 * (1 - t)  # from 5 units away to 1
        radius, cy = 0.2 / depth, horizon + (0.95 - horizon) / depth
        cx = x_far + (x_near - x_far) * t
        canvas = back.copy()
        inside = np.hypot(y - (cy - radius), x - cx) < radius
        paint(canvas, inside, colour * (0.7 + 0.3 * (x < cx)[inside][:, None]))  # shaded on one side
        frames.append(canvas)
    return frames


# ---------------------------------------------------------------------------------------------- swap
def checkerboard(rng, y, x):
    a = random_colour(rng, 40, 215)
    b = np.clip(a + rng.uniform(-70, 70, 3), 0, 255)
    cells, angle = rng.integers(3, 9), rng.uniform(0, np.pi)
    u, v = np.cos(angle) * x + np.sin(angle) * y, -np.sin(angle) * x + np.cos(angle) * y
    squares = (np.floor(u * cells) + np.floor(v * cells)) % 2
    return a + squares[..., None] * (b - a) + rng.normal(0, 10, (SIZE, SIZE, 3))


# class -> the order in which a clip shows the FRAMES evenly spaced stages of the trade (0: not traded, FRAMES - 1:
# traded): every class shows each stage once
_THERE_AND_BACK = np.r_[np.arange(0, FRAMES, 2), np.arange(FRAMES - 1, 0, -2)]
SWAP_ORDERS = {0: np.arange(FRAMES), 1: np.arange(FRAMES)[::-1], 2: _THERE_AND_BACK, 3: FRAMES - 1 - _THERE_AND_BACK}


def swap_clip(rng, label):
    y, x = grid()
    back = checkerboard(rng, y, x)
    upper, lower = random_colour(rng), random_colour(rng)
    r, row = rng.uniform(0.07, 0.1), rng.uniform(0.4, 0.6)
    left, right = rng.uniform(0.15, 0.3), rng.uniform(0.7, 0.85)
    frames = []
    for s in SWAP_ORDERS[label] / (FRAMES - 1):
        canvas = back.copy()
        lift = 0.25 * np.sin(np.pi * s)  # the upper disc passes over the other's head, the lower one under it
        paint(canvas, np.hypot(y - (row - lift), x - (left + (right - left) * s)) < r, upper)
        paint(canvas, np.hypot(y - (row + lift), x - (right - (right - left) * s)) < r, lower)
        frames.append(canvas)
    return frames


# ---------------------------------------------------------------------------------------------- speed
def blotches(rng, y, x):
    canvas = np.broadcast_to(random_colour(rng, 30, 200), (SIZE, SIZE, 3)).copy()
    for _ in range(int(rng.integers(6, 14))):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        canvas[np.hypot(y - cy, x - cx) < r] = random_colour(rng, 30, 200)
    return canvas


def speed_clip(rng, label):
    y, x = grid()
    back, colour = blotches(rng, y, x), random_colour(rng, 0, 255)
    heading = rng.uniform(0, 2 * np.pi)
    centre = np.array([0.5, 0.5]) + rng.uniform(-0.08, 0.08, 2)
    half = rng.uniform(0.3, 0.38) * np.array([np.sin(heading), np.cos(heading)])
    frames = []
    for t in np.linspace(0, 1, FRAMES):
        cy, cx = centre - half + 2 * half * t**2.5  # covers most of its path in the last frames
        r = np.hypot(y - cy, x - cx)
        canvas = back.copy()
        paint(canvas, (r < 0.09) & (r > 0.045), colour)
        frames.append(canvas)
    return frames


def played_backwards(make):
    """A clip maker for classes in pairs from one that makes the first class of each pair: the second class of a pair
    is the same draw played backwards."""
    def make_pair(rng, label):
        frames = make(rng, label - label % 2)
        return frames[::-1] if label % 2 else frames
    return make_pair


WORLDS = {
    # name: (clip maker (rng, label) -> frames, class names, frame-averaging bound)
    "direction": (played_backwards(direction_clip), ["right", "left", "down", "up"], 0.5),
    "rotation": (played_backwards(rotation_clip), ["turn_one_way", "turn_the_other_way"], 0.5),
    "approach": (played_backwards(approach_clip), ["approach", "recede"], 0.5),
    "speed": (played_backwards(speed_clip), ["speed_up", "slow_down"], 0.5),
    "swap": (swap_clip, ["trade", "trade_backwards", "trade_and_return", "start_traded_and_return"], 0.25),
}


def write_h264(path: str, frames: list[np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, mode="w") as out:
        video = out.add_stream("libx264", rate=FPS, options={"crf": "20"})
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        for pts, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            picture.pts = pts
            out.mux(video.encode(picture))
        out.mux(video.encode(None))


def make_world(out: str, world: str, train: int, val: int, seed: int) -> dict:
    make, classes, bound = WORLDS[world]
    for split, count, split_seed in (("train", train, 0), ("val", val, 1)):
        rng = np.random.default_rng([seed, split_seed, sorted(WORLDS).index(world)])
        labels = np.resize(np.arange(len(classes)), count)
        rng.shuffle(labels)
        lines = []
        for i, label in enumerate(labels):
            frames = make(rng, int(label))
            name = f"clips/{split}/{i:04d}.mp4"
            write_h264(os.path.join(out, name), frames)
            lines.append(f"{name} {int(label)}\n")
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, "classes.txt"), "w") as f:
        f.write("\n".join(classes) + "\n")
    card = {"world": world, "classes": classes, "train_clips": train, "val_clips": val, "size": SIZE,
            "frames": FRAMES, "seed": seed, "frame_averaging_bound": bound}
    with open(os.path.join(out, "world.json"), "w") as f:
        json.dump(card, f, indent=2)
    return card


def world_overrides(root: str, card: dict) -> list[str]:
    """The config keys that point `aimfl train` (or any config user) at a world written by `make_world`."""
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.class_names={root}/classes.txt", f"data.num_classes={len(card['classes'])}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--worlds", nargs="+", choices=sorted(WORLDS), default=list(WORLDS))
    parser.add_argument("--train", type=int, default=160)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for world in args.worlds:
        print(json.dumps(make_world(os.path.join(args.out, world), world, args.train, args.val, args.seed)))


if __name__ == "__main__":
    main()
