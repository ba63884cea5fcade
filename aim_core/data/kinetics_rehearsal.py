"""A Kinetics-400-shaped world for rehearsing the real recipes: the official layout, at a size a CPU trains in minutes.

What it copies from Kinetics-400 is what breaks recipes:
- `train.csv` and `val.csv` with the official header (`label,youtube_id,time_start,time_end,split,is_cc`) and 400
  class names with Kinetics' spellings: spaces, capitals, apostrophes and parentheses (`passing American football
  (in game)`); classes are indexed alphabetically, as every Kinetics loader does;
- `train/` and `val/` folders of `<youtube_id>_<start:06d>_<end:06d>.mp4` files, YouTube ids of 11 characters that
  may start with `-` or hold `_`;
- clips shorter than the recipe's sampling window (dense sampling loops them) at a 4:3 frame.

What it does not copy: the videos themselves. A clip is a blob whose colour and motion come from its class, over
noise, so a run can learn something, and nothing else is claimed for it.

    aimfl make-kinetics-rehearsal OUT [--train-per-class 2 --val-per-class 1]
"""

from __future__ import annotations

import csv
import json
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from aim_core.config import progress_options
from aim_core.data.synthetic import write_mp4

NUM_CLASSES = 400
WIDTH, HEIGHT, FRAMES, FPS = 64, 48, 32, 8  # decord misreads some frames under 76 pixels wide (48: yes, 64: no)
CSV_HEADER = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
YOUTUBE_ID_CHARACTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_VERBS = ["abseiling", "arm wrestling", "baking", "blowing", "catching", "cleaning", "climbing", "dancing",
          "drinking", "driving", "eating", "folding", "juggling", "massaging", "passing", "playing", "riding",
          "shaking", "throwing", "tying"]
_OBJECTS = ["American football (in game)", "bagpipes", "cake", "feet", "fish", "hands", "ice", "knot (not on a tie)",
            "paper", "person's head", "poker", "rope", "shoes", "snow", "tire", "tree", "trumpet", "water", "wood",
            "xylophone"]


def class_names() -> list[str]:
    """400 distinct names in Kinetics' style, in the alphabetical order that indexes them."""
    return sorted(f"{verb} {thing}" for verb in _VERBS for thing in _OBJECTS)


def youtube_id(rng: np.random.Generator) -> str:
    return "".join(rng.choice(YOUTUBE_ID_CHARACTERS, 11))


def render_clip(label: int, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES, HEIGHT, WIDTH, 3) uint8: a blob of the class's colour moving along the class's heading."""
    hue = label % 20
    colour = np.array([40 + 10 * hue, 235 - 9 * hue, 60 + 170 * (hue % 2)], dtype=np.float32)
    heading = 2 * np.pi * (label // 20) / 20
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    start = np.array([HEIGHT / 2, WIDTH / 2]) + rng.uniform(-4, 4, 2)
    background = rng.uniform(20, 90, (1, 1, 3)) + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    frames = np.empty((FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for t in range(FRAMES):
        cy, cx = start + 0.5 * t * np.array([np.sin(heading), np.cos(heading)])
        blob = ((y - cy) ** 2 + (x - cx) ** 2 < 36)[..., None]
        frames[t] = np.clip(np.where(blob, colour, background), 0, 255).astype(np.uint8)
    return frames


def _write(job: tuple[str, int, int]) -> None:
    path, label, seed = job
    write_mp4(path, render_clip(label, np.random.default_rng(seed)), fps=FPS)


def make_kinetics_rehearsal(out: str, train_per_class: int = 2, val_per_class: int = 1, seed: int = 0,
                            workers: int | None = None, progress: bool = True) -> dict:
    """Writes OUT/{train.csv,val.csv,train/,val/,rehearsal.json}; returns the summary (also in rehearsal.json)."""
    from tqdm import tqdm

    names = class_names()
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    jobs, counts = [], {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        rows = []
        for label in rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class)):
            video_id, start = youtube_id(rng), int(rng.integers(0, 300))
            rows.append([names[label], video_id, start, start + 10, split, 0])
            path = os.path.join(out, split, f"{video_id}_{start:06d}_{start + 10:06d}.mp4")
            jobs.append((path, int(label), int(rng.integers(2**31))))
        with open(os.path.join(out, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            writer.writerows(rows)
        counts[split] = len(rows)
    with ProcessPoolExecutor(max_workers=workers or min(2, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(_write, jobs, chunksize=16), total=len(jobs), desc="rehearsal clips",
                  **progress_options(progress)))
    summary = {"classes": NUM_CLASSES, "train_clips": counts["train"], "val_clips": counts["val"], "seed": seed,
               "frame": [WIDTH, HEIGHT], "frames": FRAMES, "fps": FPS}
    with open(os.path.join(out, "rehearsal.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary
