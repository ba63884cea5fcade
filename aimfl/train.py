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

import contextlib
import hashlib
import json
import os
import time

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from aim_core.config import ConfigError, to_dict
from aim_core.data.annotations import class_names_of
from aim_core.data.video import build_dataset
from aim_core.engine.checkpoint import CheckpointError, load_training_state, save_trainable, save_training_state
from aim_core.engine.evaluation import evaluate_and_report, write_report_files
from aim_core.engine.loaders import evaluation_loader, make_loader
from aim_core.engine.metrics_log import MetricsLog
from aim_core.engine.run_dir import open_run_dir
from aim_core.engine.step import build_trainer, check_mixup_batch, run_epoch, unwrap
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


class CentralizedTraining:
    """One `aimfl train` run: the inputs checked and the model built at construction (nothing written yet), then
    `run()` locks the output folder, resumes if asked, trains the epochs and writes the final files."""

    def __init__(self, cfg):
        self.cfg, self.started = cfg, time.time()
        self.rank, self.world, self.device = setup_distributed()
        sched = cfg.schedule
        per_process = sched.batch_size // (self.world * sched.accumulation_steps)
        if per_process * self.world * sched.accumulation_steps != sched.batch_size:
            raise ConfigError(f"schedule.batch_size={sched.batch_size} is not divisible by {self.world} processes x "
                              f"{sched.accumulation_steps} accumulation steps")
        check_mixup_batch(sched, per_process)
        # every input is checked before anything is written: the backbone weights, both lists, the output folder
        self.model = build_model(cfg.model, seed=cfg.seed).to(self.device)
        train_set = build_dataset(cfg, "train")
        self.train_loader, _ = make_loader(train_set, per_process, True, self.rank, self.world, cfg.seed,
                                           cfg.data.num_workers)
        self.val_loader = evaluation_loader(build_dataset(cfg, "val"), cfg, self.rank, self.world)
        if len(self.train_loader) < sched.accumulation_steps:
            raise ConfigError(f"{len(train_set)} training videos make fewer batches than one optimiser update at "
                              f"schedule.batch_size={sched.batch_size}")
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.trainer = build_trainer(self.model, cfg, self.device,
                                     updates_per_epoch=len(self.train_loader) // sched.accumulation_steps)
        self.out = cfg.output_dir
        self.ckpt_dir = os.path.join(self.out, "checkpoints")
        self.config = to_dict(cfg)
        self.class_names = class_names_of(cfg.data)
        self.best_top1, self.last_eval, self.skipped_train = -1.0, None, 0

    def run(self) -> dict:
        """Trains as configured; returns what `final.json` holds (on every rank)."""
        lead = self.rank == 0
        with open_run_dir(self.out, bool(self.cfg.resume), self.cfg.overwrite) if lead else contextlib.nullcontext():
            if lead:
                os.makedirs(self.ckpt_dir, exist_ok=True)
                OmegaConf.save(self.cfg, os.path.join(self.out, "config.yaml"))
            start_epoch = self.resume()
            self.metrics = MetricsLog(self.out, "epoch", enabled=lead, resume_after=start_epoch)
            for epoch in range(start_epoch, self.cfg.schedule.epochs):
                self.train_epoch(epoch)
            return self.finish()

    def resume(self) -> int:
        """Restores the last checkpoint when resuming; returns the epochs done."""
        resume_from = find_resume_checkpoint(self.cfg)
        if not resume_from:
            return 0
        state = load_training_state(resume_from)
        trainer = self.trainer
        load_trainable_state(unwrap(self.model), state["trainable"], source=resume_from)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        trainer.updates = state["updates"]
        self.best_top1, self.skipped_train, self.last_eval = state["best_top1"], state["skipped_train"], \
            state["last_eval"]
        if self.rank == 0:
            print(f"resumed from {resume_from} after epoch {state['epoch']}")
        return state["epoch"]

    def train_epoch(self, epoch: int) -> None:
        """One epoch, its evaluation when due, its metrics line and its checkpoint."""
        cfg, model, rank = self.cfg, self.model, self.rank
        epochs, epoch_start = cfg.schedule.epochs, time.time()
        stats = run_epoch(self.trainer, self.train_loader, epoch, cfg.seed, desc=f"epoch {epoch + 1}/{epochs}",
                          show_progress=rank == 0, log_every=cfg.log_every, on_log=self.metrics.log_step)
        totals = sum_over_ranks({"loss": stats["loss"] * stats["clips"], "clips": stats["clips"],
                                 "skipped": stats["skipped"]}, self.world)
        self.skipped_train += int(totals["skipped"])
        values = {"train_loss": totals["loss"] / max(totals["clips"], 1),
                  "lr": self.trainer.optimizer.param_groups[0]["lr"], "train_skipped_videos": int(totals["skipped"]),
                  "epoch_seconds": time.time() - epoch_start}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs:
            self.last_eval = evaluate_and_report(model, self.val_loader, cfg, self.device, progress=rank == 0)
            values.update(val_top1=self.last_eval["top1"], val_top5=self.last_eval["top5"],
                          val_skipped_videos=self.last_eval["skipped"])
            if "order_top1" in self.last_eval:
                values["val_order_top1"] = self.last_eval["order_top1"]
            if rank == 0 and self.last_eval["top1"] > self.best_top1:
                self.best_top1 = self.last_eval["top1"]
                self.save_adapters(os.path.join(self.ckpt_dir, "best.safetensors"), epoch + 1, self.best_top1)
        self.metrics.log(epoch + 1, **values)
        if rank == 0:
            line = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
            print(f"epoch {epoch + 1}/{epochs}: {line}", flush=True)
            trainer = self.trainer
            save_training_state({
                "trainable": {k: v.cpu().clone() for k, v in trainable_state(unwrap(model)).items()},
                "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
                "scaler": trainer.scaler.state_dict(), "updates": trainer.updates, "epoch": epoch + 1,
                "best_top1": self.best_top1, "last_eval": self.last_eval, "skipped_train": self.skipped_train,
                "config": self.config,
            }, os.path.join(self.ckpt_dir, "last.pt"))

    def save_adapters(self, path: str, epoch: int, top1: float) -> None:
        save_trainable(unwrap(self.model), path, self.config, {"class_names": json.dumps(self.class_names),
                                                               "epoch": str(epoch), "val_top1": f"{top1:.6f}"})

    def finish(self) -> dict:
        """final.safetensors, final.json and the report files; returns final.json's content."""
        cfg, last_eval = self.cfg, self.last_eval
        digests = trainable_digests(unwrap(self.model), self.world)
        final = {
            "val_top1": last_eval["top1"], "val_top5": last_eval["top5"], "val_loss": last_eval["loss"],
            "best_val_top1": self.best_top1,
            **({"val_order_top1": last_eval["order_top1"], "val_appearance_top1": last_eval["appearance_top1"]}
               if "order_top1" in last_eval else {}),
            **count_parameters(unwrap(self.model)), "epochs": cfg.schedule.epochs,
            "wall_seconds": round(time.time() - self.started, 1), "variant": cfg.model.variant,
            "world_size": self.world, "device": str(self.device), "skipped_videos_train": self.skipped_train,
            "skipped_videos_val": last_eval["skipped"], "ranks_in_sync": len(set(digests)) == 1,
        }
        if self.rank == 0:
            self.save_adapters(os.path.join(self.out, "final.safetensors"), cfg.schedule.epochs, final["val_top1"])
            write_report_files(last_eval, self.class_names, os.path.join(self.out, "eval"))
            with open(os.path.join(self.out, "final.json"), "w") as f:
                json.dump(final, f, indent=2)
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return final


def run(cfg) -> dict:
    """`aimfl train`: trains as configured; returns what `final.json` holds (on every rank)."""
    return CentralizedTraining(cfg).run()
