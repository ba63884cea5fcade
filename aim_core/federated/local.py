"""A client's side of federated AIM: where its videos are, and its round of local training.

- `client_setup`: a deployed site's node config (its list, video root and backbone weights) or a
  simulated partition.
- `train_round` runs the same `Trainer` epochs as `aimfl train`, at the same place in the same
  schedule: with one client and one round, federated training *is* centralized training.
"""

from __future__ import annotations

import glob
import os
import re
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aim_core.data.annotations import VideoRecord, read_annotations
from aim_core.data.partition import partition_path
from aim_core.data.video import video_dataset
from aim_core.engine.checkpoint import atomic_write
from aim_core.engine.loaders import make_loader
from aim_core.engine.step import build_trainer, check_mixup_batch, run_epoch
from aim_core.federated.settings import FederatedSettings, experiment_config


@dataclass
class ClientData:
    """One client's videos: `train` for local training, `val` (held out from it) for local evaluation."""

    train: list[VideoRecord]
    val: list[VideoRecord]
    root: str  # the folder the list's paths are relative to
    stream: int  # the client's index for seeding its epochs: its partition id, or a checksum of its list
    source: str  # the list file, for messages
    partition: int  # the simulated partition, or -1 on a deployed site (the server knows sites by node id)


def held_out_count(videos: int, fraction: float) -> int:
    """How many of a client's `videos` are held out for local evaluation: at least one each side when fraction > 0.
    The server derives each client's training count from it too."""
    return min(max(1, round(fraction * videos)), videos - 1) if fraction else 0


def local_updates(train_videos: int, cfg, local_epochs: int) -> int:
    """The optimiser updates a client makes in a round of `local_epochs` epochs over `train_videos` (the loader
    drops the last incomplete batch): the server bounds each update by them."""
    sched = cfg.schedule
    return local_epochs * ((train_videos // (sched.batch_size // sched.accumulation_steps)) // sched.accumulation_steps)


def hold_out(records: list[VideoRecord], fraction: float, seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """A seeded (train, val) split of a client's list (`held_out_count` videos held out)."""
    if not fraction:
        return records, []
    order = np.random.default_rng([seed, len(records)]).permutation(len(records))
    val = set(order[:held_out_count(len(records), fraction)].tolist())
    return [r for i, r in enumerate(records) if i not in val], [r for i, r in enumerate(records) if i in val]


class SiteConfigError(LookupError):
    """A deployed site's node config lacks a key or names a path the site does not have.

    `public` says the same without the site's paths: what the server may be told.
    """

    def __init__(self, message: str, public: str):
        super().__init__(message)
        self.public = public


# What a deployed SuperNode is told about its site (`flower-supernode --node-config '...'`).
SITE_KEYS = {
    "list-file": "the site's video list (`path label` lines)",
    "video-root": "the folder the list's paths are relative to",
    "backbone-weights": "the frozen backbone's weights, pre-staged on the site",
}
SITE_EXAMPLE = ("--node-config 'list-file=\"/data/site0/train.txt\" video-root=\"/data/site0/videos\" "
                "backbone-weights=\"/weights/backbone.pth\" num-workers=4'")


def site_paths(node_config: dict) -> dict[str, str]:
    """The site keys of a deployed SuperNode's node config, checked: each present and naming an existing path."""
    missing = [key for key in SITE_KEYS if key not in node_config]
    if missing:
        given = ", ".join(sorted(node_config)) or "nothing"
        message = f"the SuperNode's node config lacks {', '.join(missing)} (it has {given})"
        raise SiteConfigError(f"{message}; start it with {SITE_EXAMPLE}", message)
    paths = {}
    for key, meaning in SITE_KEYS.items():
        path = os.path.expanduser(str(node_config[key]))
        exists = os.path.isdir(path) if key == "video-root" else os.path.isfile(path)
        if not exists:
            kind = "folder" if key == "video-root" else "file"
            public = f"node config {key}: no such {kind} on this site ({meaning})"
            raise SiteConfigError(public.replace(f"{key}:", f"{key}={node_config[key]!r}:", 1), public)
        paths[key] = os.path.abspath(path)
    return paths


def client_setup(node_config: dict, settings: FederatedSettings):
    """The experiment config and the videos of this client: a deployed site or a simulated partition.

    Deployment (`list-file` in the node config): the site's own list, video root and backbone
    weights (and `num-workers`, optionally), so nothing but code comes with the app, and the run may
    change only its schedule and model variant (`experiment_config(site=True)`). Its epochs are
    seeded by a checksum of its list: node ids are drawn anew at each registration, the list is the
    site's. Simulation (`partition-id`, set by the engine): `client_{partition-id:03d}.txt` in
    `partition-dir`, under the config's data root.
    """
    deployed = "list-file" in node_config or "partition-id" not in node_config
    cfg = experiment_config(settings, site=deployed)
    if deployed:
        site = site_paths(node_config)
        cfg.model.backbone.checkpoint, cfg.model.backbone.pretrained = site["backbone-weights"], None
        if "num-workers" in node_config:
            cfg.data.num_workers = int(node_config["num-workers"])
        path, root, partition = site["list-file"], site["video-root"], -1
        with open(path, "rb") as f:
            stream = zlib.crc32(f.read())
    else:
        partition = int(node_config["partition-id"])
        path = partition_path(settings.partition_dir, partition)
        root, stream = cfg.data.train_root, partition
        if not os.path.isfile(path):
            raise FileNotFoundError(f"partition {partition}: {os.path.abspath(path)} does not exist; write the "
                                    f"partitions with `aimfl partition LIST --out DIR` and set partition-dir=DIR in "
                                    f"the run config")
    records = read_annotations(path, "list", num_classes=cfg.data.num_classes)
    train, val = hold_out(records, settings.local_val_fraction, settings.seed)
    return cfg, ClientData(train, val, root, stream, path, partition)


class ClientStore:
    """What a client keeps between rounds, by name: its top-k error-feedback residual (the part of its updates not
    sent yet) and, with `client-optimizer=kept`, its AdamW moments. None of it leaves the client. It is kept in
    `folder` (a simulated client's folder beside the server's run, or a deployed site's `state-dir`), so that a
    resumed run picks up what was kept after the round it resumes after, or else in Flower's `context.state`
    (`state`), which lives as long as the run.

    `load(name, r)` gives the tensors saved after the latest round before r (None: none yet); `save(name, r, tensors)`
    keeps them.
    """

    KEEP = 2  # rounds kept per name: a run that crashed after a client's round resumes one round earlier

    def __init__(self, folder: str | None, state):
        self.folder, self.state = folder, state

    def _files(self, name: str) -> dict[int, str]:
        pattern = os.path.join(self.folder, f"{name}_round*.safetensors")
        return {int(re.search(r"_round(\d+)\.", path).group(1)): path for path in glob.glob(pattern)}

    def load(self, name: str, server_round: int) -> dict[str, torch.Tensor] | None:
        if self.folder is None:
            if name not in self.state or self.state[f"{name}-round"]["round"] >= server_round:
                return None
            return self.state[name].to_torch_state_dict()
        files = self._files(name)
        earlier = [r for r in files if r < server_round]
        return load_file(files[max(earlier)]) if earlier else None

    def save(self, name: str, server_round: int, tensors: dict[str, torch.Tensor]) -> None:
        from flwr.app import ArrayRecord, ConfigRecord

        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        if self.folder is None:
            self.state[name] = ArrayRecord(tensors)
            self.state[f"{name}-round"] = ConfigRecord({"round": server_round})
            return
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, f"{name}_round{server_round:05d}.safetensors")
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
        files = self._files(name)
        for old in sorted(files)[:-self.KEEP]:
            os.remove(files[old])


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An AdamW's per-parameter state (step, moments) as named tensors, by the parameter's place in its groups."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value)
    return tensors


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    saved = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def client_store(node_config: dict, settings: FederatedSettings, data: ClientData, state) -> ClientStore:
    """Where a client keeps what it keeps between rounds: a deployed site's `state-dir` (optional; else Flower's
    context.state `state`), or a simulated client's folder beside the server's run."""
    return ClientStore(client_folder(node_config, settings, data), state)


def client_folder(node_config: dict, settings: FederatedSettings, data: ClientData) -> str | None:
    if data.partition < 0:
        return os.path.expanduser(str(node_config["state-dir"])) if "state-dir" in node_config else None
    return os.path.join(os.path.abspath(settings.out_dir), "client-state", f"client_{data.partition:03d}")


def train_round(model: torch.nn.Module, cfg, data: ClientData, server_round: int, local_epochs: int,
                proximal_mu: float, device: torch.device, store: ClientStore | None = None,
                show_progress: bool = False) -> dict:
    """`local_epochs` epochs of local training from the weights already in `model`; returns the reply metrics.
    With a `store`, the AdamW moments carry on from the client's previous round (`client-optimizer=kept`)."""
    started = time.time()
    sched = cfg.schedule
    dataset = video_dataset(cfg, data.train, data.root, train=True)
    per_batch = sched.batch_size // sched.accumulation_steps
    check_mixup_batch(sched, per_batch)
    loader, _ = make_loader(dataset, per_batch, True, 0, 1, cfg.seed, cfg.data.num_workers)
    updates_per_epoch = local_updates(len(dataset), cfg, local_epochs=1)
    if updates_per_epoch == 0:
        raise ValueError(f"{data.source}: {len(dataset)} training videos make no optimiser update at batch size "
                         f"{sched.batch_size}; give this client more videos or lower batch-size")
    trainer = build_trainer(model, cfg, device, updates_per_epoch)
    kept = store.load("optimizer", server_round) if store is not None else None
    if kept is not None:
        restore_optimizer(trainer.optimizer, kept)
    trainer.start_at((server_round - 1) * local_epochs * updates_per_epoch)
    trainer.anchor_proximal(proximal_mu)
    loss, clips, skipped = 0.0, 0, 0
    for local_epoch in range(local_epochs):
        epoch = (server_round - 1) * local_epochs + local_epoch
        stats = run_epoch(trainer, loader, epoch, cfg.seed, stream=data.stream, show_progress=show_progress,
                          desc=f"round {server_round} epoch {local_epoch + 1}/{local_epochs}", log_every=cfg.log_every)
        loss += stats["loss"] * stats["clips"]
        clips += stats["clips"]
        skipped += stats["skipped"]
    if store is not None:
        store.save("optimizer", server_round, optimizer_tensors(trainer.optimizer))
    return {"train-loss": loss / max(clips, 1), "num-examples": len(dataset), "skipped-videos": skipped,
            "train-seconds": time.time() - started, "partition-id": data.partition}
