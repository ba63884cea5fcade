"""The training step and epoch, one for every mode: `aimfl train` (centralized, DDP) and the Flower clients.

- AdamW over the trainable set only, in parameter groups: no weight decay on norms, biases
  and embeddings unless `schedule.decay_norm_bias_embed`, an lr multiplier for everything
  but the head (`schedule.backbone_lr_mult`; the official ViT-L/14 recipe uses 0.1) and one more for
  the temporal embedding or bias (`schedule.temporal_lr_mult`).
- timm's CosineLRScheduler with linear warmup, stepped every optimiser update.
- bf16 autocast on GPUs, fp32 on the CPU (fp16 with a GradScaler on request), gradient
  clipping, gradient accumulation, label smoothing and timm's mixup/cutmix.
- FedProx's proximal term, for federated clients (`Trainer.anchor_proximal`).

Every epoch starts from RNG states seeded by (seed, epoch, stream): dropout and drop-path then
draw the same masks in an uninterrupted run, a resumed run and a federated client training the
same global epoch, so none of them has to carry RNG states around.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.scheduler import CosineLRScheduler
from torch import nn

from aim_core.config import ConfigError, progress_options
from aim_core.engine.precision import autocast, resolve_precision
from aim_core.model.trainable import trainable_names


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def parameter_groups(model: nn.Module, schedule) -> list[dict]:
    """Trainable parameters grouped by (weight decay, lr scale)."""
    params = dict(unwrap(model).named_parameters())
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name in trainable_names(unwrap(model)):
        param = params[name]
        no_decay = param.ndim <= 1 or "temporal_embedding" in name or "temporal_bias" in name
        decay = schedule.weight_decay if schedule.decay_norm_bias_embed or not no_decay else 0.0
        lr_scale = 1.0 if name.startswith("head.") else schedule.backbone_lr_mult
        if "temporal_embedding" in name or "temporal_bias" in name:
            lr_scale *= schedule.temporal_lr_mult
        groups.setdefault((decay, lr_scale), []).append(param)
    return [{"params": p, "weight_decay": wd, "lr_scale": scale} for (wd, scale), p in groups.items()]


def adamw_step_scales(model: nn.Module, schedule) -> tuple[float, float]:
    """(unit step, decay scale) of an AdamW update at lr 1, from the parameter groups: the L2 norm of a step that
    moves every trainable parameter by its group's lr scale, sqrt(sum of scale^2 x parameters), and the largest
    lr scale x weight decay of a group. AdamW moves a parameter by at most about 3.16 x its lr an update, plus its
    decay, so a federated server bounds an honest update by them (server/client_sizes.py)."""
    groups = parameter_groups(model, schedule)
    unit = sum(g["lr_scale"] ** 2 * sum(p.numel() for p in g["params"]) for g in groups) ** 0.5
    return unit, max(g["lr_scale"] * g["weight_decay"] for g in groups)


def build_optimizer(model: nn.Module, schedule) -> torch.optim.AdamW:
    # each group's lr is the base lr; timm's scheduler multiplies it by the group's lr_scale
    return torch.optim.AdamW(parameter_groups(model, schedule), lr=schedule.lr, betas=tuple(schedule.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule, updates_per_epoch: int) -> CosineLRScheduler:
    warmup = round(schedule.warmup_epochs * updates_per_epoch)
    total = max(round(schedule.epochs * updates_per_epoch) - warmup, 1)
    return CosineLRScheduler(optimizer, t_initial=total, lr_min=schedule.min_lr, warmup_t=warmup,
                             warmup_lr_init=schedule.warmup_lr_init, warmup_prefix=True, t_in_epochs=False)


def check_mixup_batch(schedule, per_process: int) -> None:
    """timm's Mixup pairs each clip of a batch with another (the batch flipped), so a process's batch must be even."""
    if (schedule.mixup > 0 or schedule.cutmix > 0) and per_process % 2:
        raise ConfigError(f"schedule.mixup / schedule.cutmix pair the clips of a batch: {per_process} clips a process "
                          f"(schedule.batch_size={schedule.batch_size}) must be an even number")


def build_mixup(schedule, num_classes: int) -> Mixup | None:
    if schedule.mixup <= 0 and schedule.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=schedule.mixup, cutmix_alpha=schedule.cutmix, prob=schedule.mixup_prob,
                 switch_prob=schedule.mixup_switch_prob, label_smoothing=schedule.label_smoothing,
                 num_classes=num_classes)


@dataclass
class Trainer:
    """Everything one optimiser update touches, built once per run (or per federated round)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    device: torch.device
    precision: str
    accumulation_steps: int = 1
    clip_grad: float | None = None
    mixup: Mixup | None = None
    label_smoothing: float = 0.0
    scaler: torch.amp.GradScaler = field(init=False)
    updates: int = 0
    proximal_mu: float = 0.0
    anchor: list[torch.Tensor] | None = None

    def __post_init__(self):
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.soft_loss = SoftTargetCrossEntropy()
        self.hard_loss = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)

    def loss(self, video: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:
            # timm mixes (B, C, H, W) images; folding time into channels mixes whole clips in place
            flat = video.reshape(video.shape[0], -1, *video.shape[-2:])  # a copy only if the clip is not contiguous
            flat, targets = self.mixup(flat, labels)
            video = flat.view(video.shape)
        with autocast(self.device, self.precision):
            logits = self.model(video)
        logits = logits.float()
        loss = self.soft_loss(logits, targets) if self.mixup is not None else self.hard_loss(logits, labels)
        if self.proximal_mu:
            loss = loss + self.proximal_mu / 2 * sum((p - a).square().sum() for p, a in zip(self.params, self.anchor))
        return loss

    def anchor_proximal(self, mu: float) -> None:
        """FedProx: from now on the loss adds mu/2 * ||w - w_now||^2 over the trainable weights."""
        self.proximal_mu = mu
        self.anchor = [p.detach().clone() for p in self.params] if mu else None

    def start_at(self, updates: int) -> None:
        """Continue a schedule after `updates` optimiser updates (a federated round after earlier rounds)."""
        self.updates = updates
        self.scheduler.step_update(updates)

    def step(self, video: torch.Tensor, labels: torch.Tensor, micro_step: int = 0) -> torch.Tensor:
        """One micro-batch: forward, backward, and an optimiser update every `accumulation_steps`.

        Returns the detached loss, left on the device: reading it would wait for the GPU every step."""
        video = video.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        update = (micro_step + 1) % self.accumulation_steps == 0
        sync = contextlib.nullcontext()
        if not update and isinstance(self.model, nn.parallel.DistributedDataParallel):
            sync = self.model.no_sync()  # accumulate locally; all-reduce only on the update
        with sync:
            loss = self.loss(video, labels)
            self.scaler.scale(loss / self.accumulation_steps).backward()
        if update:
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.params, self.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            self.scheduler.step_update(self.updates)
        return loss.detach()

    def train_epoch(self, batches: Iterable[dict], progress=None, log_every: int = 10,
                    on_log: Callable[[int, float, float], None] | None = None) -> dict:
        """One pass over `batches`; returns the mean loss, clips seen and unreadable videos skipped.

        Every `log_every` micro-batches the loss and lr go to `progress` (a tqdm bar) and to `on_log(updates, loss,
        lr)`: reading the loss waits for the device, so it is not read every step."""
        self.model.train()
        total_loss, clips, skipped = torch.zeros((), device=self.device), 0, 0
        for micro, batch in enumerate(batches):
            loss = self.step(batch["video"], batch["label"], micro)
            total_loss += loss * len(batch["label"])
            clips += len(batch["label"])
            skipped += int(batch["skipped"].sum())
            if micro % log_every == 0 and (progress is not None or on_log is not None):
                value, lr = loss.item(), self.optimizer.param_groups[0]["lr"]
                if progress is not None:
                    progress.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}")
                if on_log is not None:
                    on_log(self.updates, value, lr)
        return {"loss": total_loss.item() / max(clips, 1), "clips": clips, "skipped": skipped}


def seed_for_epoch(seed: int, epoch: int, stream: int = 0) -> None:
    """Seeds torch (CPU and CUDA), numpy and random for one epoch of one training stream.

    stream: 0 for a centralized run (all DDP ranks alike), a client's index for federated clients."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[1]))


def run_epoch(trainer: Trainer, loader, epoch: int, seed: int, stream: int = 0, desc: str = "",
              show_progress: bool = True, log_every: int = 10,
              on_log: Callable[[int, float, float], None] | None = None) -> dict:
    """One seeded epoch over a training loader whose sampler hands each index its epoch (`EpochSampler`)."""
    from tqdm import tqdm

    seed_for_epoch(seed, epoch, stream)
    loader.sampler.set_epoch(epoch)
    bar = tqdm(loader, desc=desc, leave=False, **progress_options(show_progress))
    return trainer.train_epoch(bar, progress=bar, log_every=log_every, on_log=on_log)


COMPILE_MODES = ("none", "model", "blocks")


def compile_in_place(model: nn.Module, mode: str) -> None:
    """`model.compile`: torch.compile of the whole model or of each block, in place (`nn.Module.compile`), so
    parameter names, checkpoints and the trainable set stay as they are."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"model.compile={mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "model":
        unwrap(model).compile()
    elif mode == "blocks":  # the ViT's blocks, or each Swin stage's
        for stage in getattr(unwrap(model), "stages", [unwrap(model)]):
            for block in stage.blocks:
                block.compile()


def build_trainer(model: nn.Module, cfg, device: torch.device, updates_per_epoch: int) -> Trainer:
    compile_in_place(model, cfg.model.compile)
    schedule = cfg.schedule
    optimizer = build_optimizer(model, schedule)
    return Trainer(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, schedule, updates_per_epoch),
        device=device,
        precision=resolve_precision(schedule.precision, device),
        accumulation_steps=schedule.accumulation_steps,
        clip_grad=schedule.clip_grad,
        mixup=build_mixup(schedule, cfg.data.num_classes),
        label_smoothing=schedule.label_smoothing,
    )
