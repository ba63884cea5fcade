"""`model.compile` against eager: the training step's time once compiled, and what compiling costs first.

Each mode (none, model, blocks) runs in its own process on one fixed random batch, with the project's training
step; the first step's time is the compile (warm-up) cost, reported beside the steady step time. Inductor caches
what it compiled on disk, so a second run of the same shapes starts faster: `--fresh-cache` gives each process an
empty cache, as a first run on a new machine.

    python benchmarks/compile.py [--config synthetic --batch 8] [--steps 5] [--fresh-cache]
    python benchmarks/compile.py --config k400_clip_vit_b16_8f --batch 1

Prints JSON and writes it to benchmarks/results/compile_<device>_<config>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from common import RESULTS, child_result, save_report

from aim_core.config import load_config
from aim_core.engine.step import COMPILE_MODES, build_trainer
from aim_core.model.factory import build_model


def run_mode(args) -> dict:
    device = torch.device(args.device)
    cfg = load_config(args.config, [f"model.compile={args.mode}", "model.backbone.pretrained=null",
                                    "model.backbone.checkpoint=null"])
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device)
    trainer = build_trainer(model, cfg, device, updates_per_epoch=args.steps + 2)
    size = cfg.data.input_size
    video = torch.randn(args.batch, cfg.data.num_frames, 3, size, size, device=device)
    labels = torch.randint(0, cfg.data.num_classes, (args.batch,), device=device)

    def step() -> float:
        start = time.perf_counter()
        trainer.step(video, labels).item()  # .item(): wait for the device
        return time.perf_counter() - start

    first = step()
    step()
    steady = sum(step() for _ in range(args.steps)) / args.steps
    return {"mode": args.mode, "first_step_seconds": first, "step_seconds": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="synthetic")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fresh-cache", action="store_true", help="an empty inductor cache for every mode")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # set for the per-mode child process
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args)))
        return

    rows = {}
    for mode in COMPILE_MODES:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as cache:
            if args.fresh_cache:
                env["TORCHINDUCTOR_CACHE_DIR"] = cache
            rows[mode] = child_result(mode, [__file__, "--mode", mode, "--device", args.device, "--config",
                                             args.config, "--batch", str(args.batch), "--steps", str(args.steps)], env)
    eager = rows["none"]
    for row in rows.values():
        row["step_time_vs_eager"] = row["step_seconds"] / eager["step_seconds"]
        row["warmup_seconds_over_eager"] = row["first_step_seconds"] - eager["first_step_seconds"]
    report = {"benchmark": "compile", "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"cpu ({os.cpu_count()} cores)", "config": args.config, "batch": args.batch,
              "fresh_cache": args.fresh_cache, "torch": torch.__version__, "modes": rows}
    save_report(report, args.out or os.path.join(RESULTS, f"compile_{args.device.split(':')[0]}_{args.config}.json"))


if __name__ == "__main__":
    main()
