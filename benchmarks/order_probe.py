"""Order probe: how much of a motion world's frame order can be read linearly from the frozen image model alone?

For each world of `benchmarks/motion_worlds.py` (the transfer benchmark's draws: same seed, same clip counts), the
frozen embedded image model gives each clip's 8 per-frame [class] tokens (after the final norm, one test view, as
AIM's head sees them). Two logistic regressions are fitted on the training clips and scored on the validation clips:

- **in order**: the 8 tokens concatenated, so a weight can depend on the frame's place in time. What a readout of
  the frozen features that knows time, and nothing more, reaches: AIM has to learn such a readout through its
  zero-initialised temporal embedding and adapters.
- **averaged**: the mean token, what the frozen space-only probe sees (its frame-averaging bound).

A world where the in-order probe stays at the bound has no order in the frozen [class] tokens that a linear read-out
finds: there AIM must compute it (for instance a product of two frames' features), not merely read it.

    python benchmarks/order_probe.py [--out outputs/order_probe] [--worlds swap rotation] [--save]

Writes OUT/order_probe.json (and prints a Markdown table); `--save` also copies it to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import torch
from common import RESULTS, save_report
from motion_worlds import WORLDS, make_world, world_overrides
from torch.nn import functional as F

from aim_core.config import load_config
from aim_core.data.annotations import read_annotations
from aim_core.data.video import video_dataset
from aim_core.model.factory import build_model


def frozen_tokens(model, cfg, list_path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips, frames, width) per-frame [class] tokens of one test view of every clip of a list, and the labels."""
    data = cfg.data
    records = read_annotations(list_path, data.list_format, data.class_names, data.num_classes)
    dataset = video_dataset(cfg, records, data.root, train=False)
    tokens, labels = [], []
    with torch.no_grad():
        for item in dataset:
            if item["video"] is None:
                sys.exit(f"{records[item['index']].path}: unreadable")
            tokens.append(model.frame_features(item["video"][:1])[0])
            labels.append(item["label"])
    return torch.stack(tokens), torch.tensor(labels)


def logistic_regression(train_x, train_y, val_x, val_y, l2: float) -> dict:
    """Multinomial logistic regression (L-BFGS, standardised inputs, an L2 penalty): train and validation top-1."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mean) / std, (val_x - mean) / std
    classes = int(train_y.max()) + 1
    weight = torch.zeros(train_x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return {"train_top1": ((train_x @ weight + bias).argmax(1) == train_y).float().mean().item(),
                "val_top1": ((val_x @ weight + bias).argmax(1) == val_y).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/order_probe")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--train", type=int, default=160, help="training clips per world")
    parser.add_argument("--val", type=int, default=64, help="validation clips per world")
    parser.add_argument("--l2", type=float, default=0.01, help="L2 penalty of the logistic regressions")
    parser.add_argument("--save", action="store_true", help="also write benchmarks/results/order_probe.json")
    args = parser.parse_args()

    subprocess.run([sys.executable, "-m", "aimfl", "pretrain-image", args.config], check=True)  # or read the cache
    rows = []
    for world in args.worlds:
        started = time.time()
        root = os.path.abspath(os.path.join(args.out, "worlds", world))
        card = make_world(root, world, args.train, args.val, seed=0)
        cfg = load_config(args.config, [*world_overrides(root, card), "model.variant=space_only"])
        model = build_model(cfg.model, seed=cfg.seed).eval()
        train_x, train_y = frozen_tokens(model, cfg, cfg.data.train_list)
        val_x, val_y = frozen_tokens(model, cfg, cfg.data.val_list)
        in_order = logistic_regression(train_x.flatten(1), train_y, val_x.flatten(1), val_y, args.l2)
        averaged = logistic_regression(train_x.mean(1), train_y, val_x.mean(1), val_y, args.l2)
        rows.append({"world": world, "in_order": in_order, "averaged": averaged,
                     "frame_averaging_bound": card["frame_averaging_bound"],
                     "seconds": round(time.time() - started, 1)})
        print(rows[-1], flush=True)

    lines = ["| world | in order: val (train) | averaged: val (train) | frame-averaging bound |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['world']} | {r['in_order']['val_top1']:.1%} ({r['in_order']['train_top1']:.0%}) | "
                     f"{r['averaged']['val_top1']:.1%} ({r['averaged']['train_top1']:.0%}) | "
                     f"{r['frame_averaging_bound']:.0%} |")
    table = "\n".join(lines)
    print(table)
    report = {"config": args.config, "train_clips": args.train, "val_clips": args.val, "l2": args.l2, "rows": rows,
              "markdown": table}
    save_report(report, os.path.join(args.out, "order_probe.json"))
    if args.save:
        shutil.copy(os.path.join(args.out, "order_probe.json"), RESULTS)


if __name__ == "__main__":
    main()
