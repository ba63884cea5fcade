"""Time one training step (forward + backward + AdamW) of AIM against full fine-tuning.

Each variant runs in its own process so that its peak memory is its own: on the CPU the
growth of the peak RSS over the built model, on a GPU torch.cuda.max_memory_allocated. FLOPs are those that actually run in the
step (forward and backward, counted by torch's FlopCounterMode): frozen layers compute no
weight gradients, so this is less than 3x the forward pass.

    python benchmarks/step.py                      # CPU: tiny backbone
    python benchmarks/step.py --device cuda        # GPU: CLIP ViT-B/16, 8x224x224, batch 8, bf16

Prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from aim_core.config import load_config
from aim_core.model import build_model

# Dense bf16 tensor-core peak of the GPUs we report against, in FLOP/s.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def gpu_peak_flops() -> float | None:
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def run_variant(args) -> dict:
    device = torch.device(args.device)
    overrides = [f"model.variant={args.variant}", "model.backbone.pretrained=null", *args.overrides]
    cfg = load_config(args.config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    video = torch.randn(args.batch, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size, device=device)
    labels = torch.randint(0, cfg.data.num_classes, (args.batch,), device=device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = torch.nn.functional.cross_entropy(model(video), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = current_rss_gib()
    with FlopCounterMode(display=False) as counter:
        step()
    step_flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps

    result = {
        "variant": args.variant,
        "trainable_params": sum(p.numel() for p in params),
        "step_seconds": seconds,
        "clips_per_second": args.batch / seconds,
        "step_tflops_counted": step_flops / 1e12,
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = gpu_peak_flops()
        if peak:
            result["model_flops_utilisation"] = step_flops / seconds / peak
    else:
        # growth of the peak resident set over the built model: activations, gradients, optimiser state
        result["step_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - rss_before
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", help="default: tiny_clip on CPU, k400_clip_vit_b16_8f on GPU")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="JSON file to write (default benchmarks/results/step_<device>.json)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set for the per-variant child process
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.config = args.config or ("k400_clip_vit_b16_8f" if on_gpu else "tiny_clip")
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")

    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    results = {}
    for variant in ("aim", "full_finetune"):
        child = [sys.executable, __file__, "--variant", variant, "--device", args.device, "--config", args.config,
                 "--batch", str(args.batch), "--dtype", args.dtype, "--steps", str(args.steps),
                 "--warmup", str(args.warmup), *args.overrides]
        out = subprocess.run(child, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{variant} failed:\n{out.stderr}")
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    aim, full = results["aim"], results["full_finetune"]
    memory_key = "peak_memory_gib" if on_gpu else "step_memory_gib"
    report = {
        "benchmark": "train_step",
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({os.cpu_count()} cores)",
        "config": args.config,
        "overrides": args.overrides,
        "batch": args.batch,
        "dtype": args.dtype,
        "torch": torch.__version__,
        **results,
        "aim_vs_full": {
            "memory_ratio": aim[memory_key] / full[memory_key],
            "step_time_ratio": aim["step_seconds"] / full["step_seconds"],
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"step_{args.device.split(':')[0]}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
