"""Swin's window attention: timm's unfused path (softmax of explicit matmuls) against its fused one
(`F.scaled_dot_product_attention` with the relative position bias as the mask), on one AIM Swin training step.

timm marks its fused Swin path experimental and leaves it off (`fused_attn=False`); this measures whether turning it
on (`model.swin_fused_attention=true`) pays, and how far the two paths' logits and gradients are apart.

    python benchmarks/swin_attention.py [--config k400_in21k_swin_b_32f] [--frames 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from aim_core.config import load_config
from aim_core.model.factory import build_model

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def step_seconds(model, video, repeats: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Median seconds of a forward and backward pass (after one warm-up), the logits and one gradient."""
    times = []
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        logits = model(video)
        logits.square().sum().backward()
        times.append(time.perf_counter() - started)
    grad = next(p.grad for p in model.parameters() if p.grad is not None)
    return sorted(times[1:])[len(times[1:]) // 2], logits.detach(), grad.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="k400_in21k_swin_b_32f")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rows, outputs = [], {}
    for fused in (False, True):
        cfg = load_config(args.config, ["model.backbone.pretrained=null", f"data.num_frames={args.frames}",
                                        "model.drop_path_rate=0", "model.head_dropout=0",
                                        f"model.swin_fused_attention={str(fused).lower()}"])
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        video = torch.randn(1, args.frames, 3, cfg.data.input_size, cfg.data.input_size,
                            generator=torch.Generator().manual_seed(0))
        seconds, logits, grad = step_seconds(model, video, args.repeats)
        outputs[fused] = (logits, grad)
        rows.append({"fused_attention": fused, "step_seconds": round(seconds, 3)})
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "config": args.config, "frames": args.frames, "batch": 1, "device": "cpu", "threads": torch.get_num_threads(),
        "torch": torch.__version__, "rows": rows,
        "fused_over_unfused": round(rows[1]["step_seconds"] / rows[0]["step_seconds"], 3),
        "max_logit_difference": (outputs[True][0] - outputs[False][0]).abs().max().item(),
        "max_gradient_difference": (outputs[True][1] - outputs[False][1]).abs().max().item(),
    }
    print(json.dumps(report, indent=2))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "swin_attention_cpu.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
