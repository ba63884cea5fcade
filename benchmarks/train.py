"""Training throughput and memory of AIM against full fine-tuning of the same network.

Both variants run the project's own training step (`aim_core.engine.step.Trainer`), each in its own
process so that its peak memory is its own: on the CPU the peak RSS and its growth over the built
model, on a GPU torch.cuda.max_memory_allocated.

    --input videos   end to end: real H.264 files decoded and augmented by the DataLoader
    --input random   the training step alone, on one fixed batch

Rows, each in one run: AIM, full fine-tuning of the same network, AIM with activation checkpointing, and (for
CLIP configs) the official code's layout of the same model (`benchmarks/official_aim.py`, nn.MultiheadAttention),
which every speed claim is a ratio against. Activation memory is the bytes autograd saves for backward in one
forward (a saved-tensors hook, parameters left out), the same measure on any device.

FLOPs are those that actually run in a step (forward and backward, counted by torch's
FlopCounterMode): frozen layers compute no weight gradients, so this is less than the "3 x
forward" rule. The achieved FLOP/s are also given against what one large matrix product reaches on the same
machine (`matmul_ceiling_tflops_per_second`): the physical limit here.
Model FLOPs utilisation on a GPU is given both ways: `mfu_counted` (counted
FLOPs) and `mfu_6x_macs` (multiply-adds x 2 x 3, the usual formula, which overstates AIM's work).

    python benchmarks/train.py                                  # CPU: embedded model shape, synthetic videos
    python benchmarks/train.py --device cuda                    # GPU: CLIP ViT-B/16, 8x224x224, batch 8, bf16

Prints JSON and writes it to benchmarks/results/train_<device>_<input>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import torch
from common import RESULTS, child_result, save_report
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from aim_core.config import load_config
from aim_core.data.annotations import read_annotations
from aim_core.data.video import video_dataset
from aim_core.engine.step import build_trainer
from aim_core.model.counting import count_forward_macs
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters

# Dense bf16 tensor-core peak of the GPUs we report against, in FLOP/s.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def current_rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def saved_activation_bytes(trainer, video: torch.Tensor, labels: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward pass, each storage once and the
    parameters left out: the activation memory a step holds at its peak, on any device."""
    parameters = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    saved = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = trainer.loss(video.to(trainer.device), labels.to(trainer.device))
    del loss
    return sum(saved.values())


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """What one large matrix product achieves here: the ceiling a training step's FLOP/s is measured against."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up (kernel choice, thread pool)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def video_batches(cfg, folder: str, batch: int, on_gpu: bool):
    """An endless iterator of training batches decoded from generated videos."""
    if on_gpu:  # Kinetics-sized videos for the paper's 8x224x224 clips
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from data import make_videos

        records = make_videos(folder, 8)
    else:
        from aim_core.data.synthetic import make_synthetic

        make_synthetic(folder, train_per_class=4, val_per_class=1, progress=False)
        records = read_annotations(os.path.join(folder, "train.txt"))
    dataset = video_dataset(cfg, records, folder, train=True)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=cfg.data.num_workers,
                        persistent_workers=cfg.data.num_workers > 0, pin_memory=on_gpu)
    while True:
        yield from loader


def run_variant(args) -> dict:
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    cfg = load_config(args.config, [f"model.variant={args.variant}", "model.backbone.pretrained=null",
                                    "model.backbone.checkpoint=null", *args.overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if args.baseline:  # the same weights in the official code's layout (benchmarks/official_aim.py)
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from official_aim import OfficialAIM

        model = OfficialAIM(model)
    model = model.to(device)
    trainer = build_trainer(model, cfg, device, updates_per_epoch=args.steps + args.warmup + 1)
    size, frames = cfg.data.input_size, cfg.data.num_frames
    with tempfile.TemporaryDirectory() as folder:
        if args.input == "videos":
            batches = video_batches(cfg, folder, args.batch, on_gpu)
        else:
            fixed = {"video": torch.randn(args.batch, frames, 3, size, size, device=device),
                     "label": torch.randint(0, cfg.data.num_classes, (args.batch,), device=device)}
            batches = iter(lambda: fixed, None)
        rss_before = current_rss_gib()
        first = next(batches)
        with FlopCounterMode(display=False) as counter:
            trainer.step(first["video"], first["label"], 0)
        step_flops = counter.get_total_flops()

        def train_steps(count: int) -> None:
            for _ in range(count):
                batch = next(batches)
                trainer.step(batch["video"], batch["label"], 0)
            if on_gpu:
                torch.cuda.synchronize()

        train_steps(args.warmup)
        activation_bytes = saved_activation_bytes(trainer, first["video"], first["label"])
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        train_steps(args.steps)
        seconds = (time.perf_counter() - start) / args.steps

    with torch.device("meta"):
        meta_model = build_model(cfg.model).eval()  # the baseline computes the same function: the same MACs
        view = torch.empty(1, frames, 3, size, size)
    macs_per_clip = count_forward_macs(meta_model, view)
    result = {"variant": args.variant, "baseline": bool(args.baseline), **count_parameters(model),
              "precision": trainer.precision,
              "step_seconds": seconds, "clips_per_second": args.batch / seconds,
              "step_tflops_counted": step_flops / 1e12, "forward_gmacs_per_clip": macs_per_clip / 1e9,
              "saved_activations_mib": activation_bytes / 2**20,
              "achieved_tflops_per_second": step_flops / seconds / 1e12}
    if on_gpu:
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = next((p for key, p in BF16_PEAK.items() if key in torch.cuda.get_device_name()), None)
        if peak:
            result["mfu_counted"] = step_flops / seconds / peak
            result["mfu_6x_macs"] = 6 * macs_per_clip * args.batch / seconds / peak
    else:
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        result["peak_rss_gib"] = peak_rss
        result["step_memory_gib"] = peak_rss - rss_before  # activations, gradients, optimiser state
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--input", choices=["videos", "random"], default="videos")
    parser.add_argument("--config", help="default: synthetic on CPU, k400_clip_vit_b16_8f on GPU")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # set for the per-variant child process
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)  # ... timing the baseline
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.config = args.config or ("k400_clip_vit_b16_8f" if on_gpu else "synthetic")

    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    results = {}
    # (row, variant, overrides): AIM, full fine-tuning of the same network, and AIM recomputing its blocks in
    # backward (activation checkpointing: fewer saved activations for more compute)
    rows = [("aim", "aim", []), ("full_finetune", "full_finetune", []),
            ("aim_grad_checkpointing", "aim", ["model.grad_checkpointing=true"])]
    clip = load_config(args.config, args.overrides).model.backbone.family == "open_clip"
    if clip:  # the official code is CLIP's ViT: the baseline exists for open_clip configs
        rows.append(("official_baseline", "aim", ["--baseline"]))
    for row, variant, extra in rows:
        flags = [item for item in extra if item.startswith("--")]
        results[row] = child_result(row, [
            __file__, "--variant", variant, "--device", args.device, "--input", args.input, "--config", args.config,
            "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), *flags,
            "--set", *args.overrides, *[item for item in extra if item not in flags]])
    aim, full = results["aim"], results["full_finetune"]
    memory_key = "peak_memory_gib" if on_gpu else "step_memory_gib"
    device = torch.device(args.device)
    ceiling = matmul_flops_per_second(device, torch.bfloat16 if on_gpu else torch.float32, 8192 if on_gpu else 2048)
    for result in results.values():
        result["fraction_of_matmul_ceiling"] = result["achieved_tflops_per_second"] * 1e12 / ceiling
    report = {
        "benchmark": f"train ({args.input})",
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu ({os.cpu_count()} cores)",
        "config": args.config, "overrides": args.overrides, "batch": args.batch, "torch": torch.__version__,
        "matmul_ceiling_tflops_per_second": ceiling / 1e12, **results,
        "aim_vs_full": {"memory_ratio": aim[memory_key] / full[memory_key],
                        "saved_activations_ratio": aim["saved_activations_mib"] / full["saved_activations_mib"],
                        "step_time_ratio": aim["step_seconds"] / full["step_seconds"],
                        "counted_flops_ratio": aim["step_tflops_counted"] / full["step_tflops_counted"]},
        **({"aim_vs_official_baseline": {
            key: aim[field] / results["official_baseline"][field] for key, field in (
                ("step_time_ratio", "step_seconds"), ("saved_activations_ratio", "saved_activations_mib"),
                ("memory_ratio", memory_key))}} if clip else {}),
        "aim_grad_checkpointing_vs_full": {
            "saved_activations_ratio": results["aim_grad_checkpointing"]["saved_activations_mib"]
            / full["saved_activations_mib"],
            "step_time_ratio": results["aim_grad_checkpointing"]["step_seconds"] / full["step_seconds"]},
    }
    save_report(report, args.out or os.path.join(RESULTS, f"train_{args.device.split(':')[0]}_{args.input}.json"))


if __name__ == "__main__":
    main()
