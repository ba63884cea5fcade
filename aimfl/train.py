"""`aimfl train CONFIG [key=value ...]`: centralized AIM training, one process or DDP under torchrun.

    aimfl train synthetic
    torchrun --nproc-per-node 2 -m aimfl train synthetic       # DDP: NCCL on GPUs, gloo on CPU

Every epoch: train (DistributedSampler, progress bar on rank 0), evaluate on the val list every
`eval_every` epochs (softmax averaged over views), log JSONL and TensorBoard, and write
`checkpoints/last.pt` atomically (trainable state, optimiser, scheduler, scaler, epoch) plus
`best.safetensors`; every epoch seeds its own RNG (`aim_core.engine.step.seed_for_epoch`).
`resume=auto` continues from `last.pt` and ends where an uninterrupted run would. The run ends with
`final.safetensors` (the trainable state, loadable by `aimfl eval` and `aimfl predict`), `final.json` and
the eval report files.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from aim_core.config import to_dict
from aim_core.data.annotations import class_names_of
from aim_core.data.video import build_dataset
from aim_core.engine.checkpoint import CheckpointError, load_training_state, save_trainable, save_training_state
from aim_core.engine.evaluation import evaluate_and_report, write_report_files
from aim_core.engine.loaders import evaluation_loader, make_loader
from aim_core.engine.metrics_log import MetricsLog
from aim_core.engine.step import build_trainer, run_epoch, unwrap
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters, load_trainable_state, trainable_state


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def trainable_digests(model: torch.nn.Module, world: int) -> list[str]:
    """A hash of the trainable weights on each rank: DDP replicas must agree bit for bit."""
    h = hashlib.sha256()
    for value in trainable_state(model).values():
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    if world == 1:
        return [h.hexdigest()]
    digests = [None] * world
    dist.all_gather_object(digests, h.hexdigest())
    return digests


def find_resume_checkpoint(cfg) -> str | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        path = os.path.join(cfg.output_dir, "checkpoints", "last.pt")
        return path if os.path.isfile(path) else None
    if not os.path.isfile(cfg.resume):
        raise CheckpointError(f"resume={cfg.resume}: no such checkpoint")
    return cfg.resume


def sum_over_ranks(values: dict, world: int) -> dict:
    if world == 1:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def run(cfg) -> dict:
    """Trains as configured; returns what `final.json` holds (on every rank)."""
    started = time.time()
    rank, world, device = setup_distributed()
    sched = cfg.schedule
    per_process = sched.batch_size // (world * sched.accumulation_steps)
    if per_process * world * sched.accumulation_steps != sched.batch_size:
        raise ValueError(f"schedule.batch_size={sched.batch_size} is not divisible by {world} processes x "
                         f"{sched.accumulation_steps} accumulation steps")
    torch.manual_seed(cfg.seed)  # the initialisation (adapters, head), the same in federated runs

    model = build_model(cfg.model).to(device)  # fails here, before anything is written, on missing weights
    out = cfg.output_dir
    ckpt_dir = os.path.join(out, "checkpoints")
    if rank == 0:
        os.makedirs(ckpt_dir, exist_ok=True)
        OmegaConf.save(cfg, os.path.join(out, "config.yaml"))
    train_set = build_dataset(cfg, "train")
    train_loader, _ = make_loader(train_set, per_process, True, rank, world, cfg.seed, cfg.data.num_workers)
    val_loader = evaluation_loader(build_dataset(cfg, "val"), cfg, rank, world)
    if len(train_loader) < sched.accumulation_steps:
        raise ValueError(f"{len(train_set)} training videos make fewer batches than one optimiser update")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer = build_trainer(model, cfg, device, updates_per_epoch=len(train_loader) // sched.accumulation_steps)
    config = to_dict(cfg)
    class_names = class_names_of(cfg.data)
    metadata = {"class_names": json.dumps(class_names)}

    start_epoch, best_top1, last_eval, skipped_train = 0, -1.0, None, 0
    resume_from = find_resume_checkpoint(cfg)
    if resume_from:
        state = load_training_state(resume_from)
        load_trainable_state(unwrap(model), state["trainable"], source=resume_from)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        trainer.updates = state["updates"]
        start_epoch, best_top1, skipped_train = state["epoch"], state["best_top1"], state["skipped_train"]
        last_eval = state["last_eval"]
        if rank == 0:
            print(f"resumed from {resume_from} after epoch {start_epoch}")

    metrics = MetricsLog(out, enabled=rank == 0)
    for epoch in range(start_epoch, sched.epochs):
        epoch_start = time.time()
        stats = run_epoch(trainer, train_loader, epoch, cfg.seed, desc=f"epoch {epoch + 1}/{sched.epochs}",
                          show_progress=rank == 0)
        totals = sum_over_ranks({"loss": stats["loss"] * stats["clips"], "clips": stats["clips"],
                                 "skipped": stats["skipped"]}, world)
        skipped_train += int(totals["skipped"])
        values = {"train_loss": totals["loss"] / max(totals["clips"], 1),
                  "lr": trainer.optimizer.param_groups[0]["lr"], "train_skipped_videos": int(totals["skipped"]),
                  "epoch_seconds": time.time() - epoch_start}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == sched.epochs:
            last_eval = evaluate_and_report(model, val_loader, cfg, device, progress=rank == 0)
            values.update(val_top1=last_eval["top1"], val_top5=last_eval["top5"],
                          val_skipped_videos=last_eval["skipped"])
            if "order_top1" in last_eval:
                values["val_order_top1"] = last_eval["order_top1"]
            if rank == 0 and last_eval["top1"] > best_top1:
                best_top1 = last_eval["top1"]
                save_trainable(unwrap(model), os.path.join(ckpt_dir, "best.safetensors"), config,
                               {**metadata, "epoch": str(epoch + 1), "val_top1": f"{best_top1:.6f}"})
        metrics.log("epoch", epoch + 1, **values)
        if rank == 0:
            line = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            print(f"epoch {epoch + 1}/{sched.epochs}: {line}", flush=True)
        if rank == 0:
            save_training_state({
                "trainable": {k: v.cpu().clone() for k, v in trainable_state(unwrap(model)).items()},
                "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(), "updates": trainer.updates, "epoch": epoch + 1,
                "best_top1": best_top1, "last_eval": last_eval, "skipped_train": skipped_train,
                "config": config,
            }, os.path.join(ckpt_dir, "last.pt"))

    counts = count_parameters(unwrap(model))
    digests = trainable_digests(unwrap(model), world)
    final = {
        "val_top1": last_eval["top1"], "val_top5": last_eval["top5"], "best_val_top1": best_top1,
        **({"val_order_top1": last_eval["order_top1"], "val_appearance_top1": last_eval["appearance_top1"]}
           if "order_top1" in last_eval else {}),
        **counts, "epochs": sched.epochs, "wall_seconds": round(time.time() - started, 1),
        "variant": cfg.model.variant, "world_size": world, "device": str(device),
        "skipped_videos_train": skipped_train, "skipped_videos_val": last_eval["skipped"],
        "ranks_in_sync": len(set(digests)) == 1,
    }
    if rank == 0:
        save_trainable(unwrap(model), os.path.join(out, "final.safetensors"), config,
                       {**metadata, "epoch": str(sched.epochs), "val_top1": f"{final['val_top1']:.6f}"})
        write_report_files(last_eval, class_names, os.path.join(out, "eval"))
        with open(os.path.join(out, "final.json"), "w") as f:
            json.dump(final, f, indent=2)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final
