"""DataLoaders for training and evaluation, the same for one process, DDP ranks and federated clients."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from aim_core.data.video import collate_readable


class EpochSampler(DistributedSampler):
    """DistributedSampler whose indices carry their epoch, `(epoch, index)`: a training item's augmentation is
    seeded by both, and this way worker processes learn the epoch with every index, so they can persist."""

    def __iter__(self):
        return ((self.epoch, index) for index in super().__iter__())


def make_loader(dataset: Dataset, batch_size: int, train: bool, rank: int = 0, world: int = 1, seed: int = 0,
                workers: int = 0) -> tuple[DataLoader, DistributedSampler]:
    """A loader over this rank's share of `dataset`; training shuffles by (seed, epoch) and drops the last
    incomplete batch, evaluation keeps every item (`evaluate` gathers the ranks' results by index)."""
    sampler = (EpochSampler if train else DistributedSampler)(dataset, num_replicas=world, rank=rank, shuffle=train,
                                                              seed=seed, drop_last=train)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=train,
                        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                        collate_fn=None if train else collate_readable)
    return loader, sampler


def evaluation_loader(dataset: Dataset, cfg, rank: int = 0, world: int = 1) -> DataLoader:
    """Test items hold every view of a video, so a batch is half the training batch of this rank."""
    per_rank = cfg.schedule.batch_size // (world * cfg.schedule.accumulation_steps)
    loader, _ = make_loader(dataset, max(1, per_rank // 2), False, rank, world, cfg.seed, cfg.data.num_workers)
    return loader
