"""Transfer benchmark: does the embedded image model, frozen, let AIM learn time on worlds nobody here trained it on?

For each world of `benchmarks/motion_worlds.py` (classes that differ only in frame order), it trains the frozen
space-only linear probe, +temporal and AIM with `aimfl train` on `configs/synthetic.yaml`, changing only the data
keys, exactly as a user with their own videos would, and reports top-1 against the world's frame-averaging bound,
the trainable count and the wall time. With an empty cache the image model's pre-training (`aimfl pretrain-image`)
runs first, and its time is reported too.

A world's three trainings run `--jobs` at a time (default 2), each on cores/jobs threads: this small model keeps one
core busier than two (measured on 2 cores from an empty cache: 255-280 s a world with AIM beside space-only, then
+temporal, one thread each, against 320-367 s one after the other on 2 threads). AIM, the longest, starts first.
Each run's console output goes to `train.log` in its run folder.

    python benchmarks/transfer.py [--out outputs/transfer] [--worlds direction rotation] [--jobs 2] [--set k=v ...]

Writes OUT/transfer.json (and prints a Markdown table); `--save` also copies it to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from motion_worlds import WORLDS, make_world, world_overrides

from aimfl.processes import threads_each

VARIANTS = ["space_only", "temporal", "aim"]
LONGEST_FIRST = ["aim", "space_only", "temporal"]  # with 2 jobs: AIM beside space-only, then +temporal
LABELS = {"space_only": "frozen space-only", "temporal": "+ temporal", "aim": "AIM"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def aimfl(*args: str, log: str | None = None, threads: int | None = None) -> float:
    """Runs one aimfl command and returns its wall time; its output goes to `log` (default: the console), and it
    computes on `threads` threads when given."""
    started = time.time()
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if log is None:
        subprocess.run([sys.executable, "-m", "aimfl", *args], check=True, env=env)
    else:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "w") as out:
            if subprocess.run([sys.executable, "-m", "aimfl", *args], stdout=out, stderr=subprocess.STDOUT,
                              env=env).returncode:
                sys.exit(f"aimfl {args[0]} failed: see {log}")
    return time.time() - started


def train(args, world: str, data: list[str], card: dict, threads: int, variant: str) -> dict:
    """One variant's `aimfl train` on a world; returns its row of the report."""
    run_dir = os.path.join(args.out, "runs", world, variant)
    seconds = aimfl("train", args.config, *data, *args.overrides, f"model.variant={variant}", f"output_dir={run_dir}",
                    "overwrite=true", log=os.path.join(run_dir, "train.log"), threads=threads)
    with open(os.path.join(run_dir, "final.json")) as f:
        final = json.load(f)
    row = {"world": world, "variant": variant, "val_top1": final["val_top1"],
           "frame_averaging_bound": card["frame_averaging_bound"], "trainable_params": final["trainable_params"],
           "total_params": final["total_params"], "wall_seconds": round(seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/transfer")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    parser.add_argument("--train", type=int, default=160, help="training clips per world")
    parser.add_argument("--val", type=int, default=64, help="validation clips per world")
    parser.add_argument("--jobs", type=int, default=2, help="trainings of a world run at once")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="config overrides for every run")
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results/transfer.json")
    args = parser.parse_args()

    pretrain_seconds = aimfl("pretrain-image", args.config, *args.overrides)
    threads = threads_each(args.jobs)
    variants = [variant for variant in LONGEST_FIRST if variant in args.variants]
    rows, worlds = [], {}
    for world in args.worlds:
        root = os.path.abspath(os.path.join(args.out, "worlds", world))
        shutil.rmtree(root, ignore_errors=True)
        started = time.time()
        card = make_world(root, world, args.train, args.val, seed=0)
        worlds[world] = {"make_seconds": round(time.time() - started, 1)}
        data = world_overrides(root, card)
        with ThreadPoolExecutor(args.jobs) as pool:
            done = dict(zip(variants, pool.map(partial(train, args, world, data, card, threads), variants)))
        rows += [done[variant] for variant in VARIANTS if variant in done]
        worlds[world]["seconds"] = round(time.time() - started, 1)  # making its clips and its trainings

    lines = ["| world | run | top-1 | frame-averaging bound | trainable | wall time |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {LABELS[r['variant']]} | {r['val_top1']:.1%} | "
                     f"{r['frame_averaging_bound']:.0%} | {r['trainable_params']:,} of {r['total_params']:,} | "
                     f"{r['wall_seconds']:.0f} s |")
    table = "\n".join(lines)
    per_world = ", ".join(f"{world} {w['seconds']:.0f} s" for world, w in worlds.items())
    print(f"image model: {pretrain_seconds:.0f} s (pre-training, or reading the cache)\n{table}\n"
          f"per world (making its clips and the trainings): {per_world}")
    report = {"config": args.config, "overrides": args.overrides, "train_clips": args.train, "val_clips": args.val,
              "jobs": args.jobs, "threads_per_job": threads,
              "pretrain_image_seconds": round(pretrain_seconds, 1), "worlds": worlds, "rows": rows, "markdown": table,
              "total_seconds": round(pretrain_seconds + sum(w["seconds"] for w in worlds.values()), 1)}
    os.makedirs(args.out, exist_ok=True)
    for folder in [args.out] + ([RESULTS] if args.save else []):
        with open(os.path.join(folder, "transfer.json"), "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
