"""DataLoaders for training and evaluation, the same for one process, DDP ranks and federated clients."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aim_core.data.video import collate_readable


def make_loader(dataset: Dataset, batch_size: int, train: bool, rank: int = 0, world: int = 1, seed: int = 0,
                workers: int = 0) -> tuple[DataLoader, DistributedSampler]:
    """A loader over this rank's share of `dataset`; training shuffles by (seed, epoch) and drops the last
    incomplete batch, evaluation keeps every item (`evaluate` gathers the ranks' results by index)."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=seed, drop_last=train)
    # training workers are not persistent: each epoch's workers must get the dataset's new epoch (its RNG seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=train,
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0 and not train,
                        collate_fn=None if train else collate_readable)
    return loader, sampler


def evaluation_loader(dataset: Dataset, cfg, rank: int = 0, world: int = 1) -> DataLoader:
    """Test items hold every view of a video, so a batch is half the training batch of this rank."""
    per_rank = cfg.schedule.batch_size // (world * cfg.schedule.accumulation_steps)
    loader, _ = make_loader(dataset, max(1, per_rank // 2), False, rank, world, cfg.seed, cfg.data.num_workers)
    return loader
