"""What federated clients and the server share: the run settings, the wire format, local training.

Flower's quickstart keeps one `task.py` for both apps; this is aimfl's. `client/client_app.py`
and `server/server_app.py` import from here and from nowhere else in each other.

- `FederatedSettings`: the `[tool.flwr.app.config]` knobs of pyproject.toml (their defaults live
  there and only there), and `experiment_config`, the aimfl config they select and adjust.
- The wire: the trainable state only (`trainable_names`), the same key set in both directions, as
  fp32 or fp16 (bf16 cannot be put in an ArrayRecord, so it is cast). `update_problem` is the
  server's check of a client reply before aggregation; it names what is wrong.
- A client's setup (`client_setup`: a deployed site's node config or a simulated partition)
  and its round of local training (`train_round`), which runs the same `Trainer` epochs as
  `aimfl train`, at the same place in the same schedule: with one client and one round,
  federated training *is* centralized training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import time
import tomllib
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord

from aim_core.annotations import VideoRecord, read_annotations
from aim_core.config import ConfigError, load_config

UPDATE_DTYPES = {"fp32": "float32", "fp16": "float16"}  # the wire dtypes, named as torch and numpy name them


def encode_state(state: dict[str, torch.Tensor], dtype: str) -> ArrayRecord:
    """A trainable state as an ArrayRecord in the wire dtype (`fp32` or `fp16`)."""
    if dtype not in UPDATE_DTYPES:
        raise ValueError(f"update dtype {dtype!r}; choose one of {', '.join(UPDATE_DTYPES)}")
    wire = getattr(torch, UPDATE_DTYPES[dtype])
    return ArrayRecord({k: v.detach().to("cpu", wire).contiguous() for k, v in state.items()})


def decode_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """An ArrayRecord back as fp32 tensors."""
    return {k: v.float() for k, v in record.to_torch_state_dict().items()}


def payload_bytes(record: ArrayRecord) -> int:
    """The bytes of the arrays themselves (elements x element size), without record framing."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())


def update_problem(
    record: ArrayRecord,
    expected: dict[str, tuple[int, ...]],
    dtype: str,
    num_examples,
    sent: dict[str, torch.Tensor] | None = None,
    max_update_norm: float | None = None,
) -> str | None:
    """Why a client's reply cannot be aggregated, or None if it can.

    expected: key -> shape of the global trainable state; sent: the state the client received,
    for the norm of its update (reply - sent), bounded by `max_update_norm` when given.
    """
    if not isinstance(num_examples, (int, float)) or isinstance(num_examples, bool) or not num_examples > 0:
        return f"num-examples must be a positive number, got {num_examples!r}"
    missing, unexpected = sorted(expected.keys() - record.keys()), sorted(record.keys() - expected.keys())
    if missing or unexpected:
        return f"key set differs: {len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
    wire = np.dtype(UPDATE_DTYPES[dtype])
    squared = 0.0
    for key, shape in expected.items():
        array = record[key]
        if tuple(array.shape) != tuple(shape):
            return f"{key}: shape {tuple(array.shape)}, expected {tuple(shape)}"
        if np.dtype(array.dtype) != wire:
            return f"{key}: dtype {array.dtype}, expected {wire}"
        values = array.numpy()  # checked in numpy: no copy into torch for every reply of every round
        if not np.isfinite(values).all():
            return f"{key}: non-finite values"
        if sent is not None:
            squared += float(np.square(values.astype(np.float32) - np.asarray(sent[key], dtype=np.float32)).sum())
    if max_update_norm is not None and sent is not None and math.sqrt(squared) > max_update_norm:
        return f"update norm {math.sqrt(squared):.4g} exceeds the bound {max_update_norm:.4g}"
    return None

APP_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the Flower app: pyproject.toml and packages


@dataclass(frozen=True)
class FederatedSettings:
    """The run config of a federated run, typed; pyproject.toml `[tool.flwr.app.config]` documents each key."""

    config: str
    overrides: str
    num_server_rounds: int
    stop_after_round: int
    local_epochs: int
    lr: float
    warmup_rounds: int
    batch_size: int
    strategy: str
    proximal_mu: float
    server_lr: float
    beta_1: float
    beta_2: float
    tau: float
    trimmed_beta: float
    krum_malicious_nodes: int
    dp_noise_multiplier: float
    dp_clipping_norm: float
    dp_target_delta: float
    weighting: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    min_valid_replies: int
    round_timeout: float
    central_eval_every: int
    client_eval_every: int
    local_val_fraction: float
    update_dtype: str
    max_update_norm: float
    partition_dir: str
    out_dir: str
    resume: bool
    seed: int

    @classmethod
    def from_run_config(cls, run_config: dict) -> FederatedSettings:
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                raise ConfigError(f"run config lacks {key!r}; declare it in pyproject.toml [tool.flwr.app.config]")
            kind = {"str": str, "int": int, "float": float, "bool": bool}[field.type]
            value = run_config[key]
            if kind is not str and isinstance(value, str) or kind is bool and not isinstance(value, bool):
                raise ConfigError(f"run config {key}={value!r} is not a {field.type}")
            values[field.name] = kind(value)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.update_dtype not in UPDATE_DTYPES:
            raise ConfigError(f"run config update-dtype={self.update_dtype!r}; choose one of {', '.join(UPDATE_DTYPES)}")
        if self.weighting not in ("num-examples", "uniform"):
            raise ConfigError(f"run config weighting={self.weighting!r}; choose num-examples or uniform")
        if self.dp_noise_multiplier > 0 and self.weighting != "uniform":
            raise ConfigError("differential privacy (dp-noise-multiplier > 0) needs weighting=\"uniform\": "
                              "the accountant's sensitivity bound assumes equal client weights")
        if self.client_eval_every and not self.local_val_fraction > 0:
            raise ConfigError("client-eval-every > 0 needs local-val-fraction > 0 (clients evaluate on held-out videos)")
        if not 0 <= self.local_val_fraction < 1:
            raise ConfigError(f"run config local-val-fraction={self.local_val_fraction} must be in [0, 1)")

    @property
    def last_round(self) -> int:
        """The round this invocation stops after (`stop-after-round` ends a run early, to resume later)."""
        return min(self.num_server_rounds, self.stop_after_round or self.num_server_rounds)


def default_run_config() -> dict:
    """The `[tool.flwr.app.config]` defaults of pyproject.toml, flattened as Flower flattens them."""
    with open(os.path.join(APP_ROOT, "pyproject.toml"), "rb") as f:
        app_config = tomllib.load(f)["tool"]["flwr"]["app"]["config"]

    def flatten(node: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return flat

    return flatten(app_config)


def experiment_config(settings: FederatedSettings):
    """The aimfl config the run trains: `config` with `overrides`, its schedule stretched over the rounds.

    The cosine schedule spans rounds x local epochs, with `warmup-rounds` of warmup; every client
    follows it by its own updates per epoch, so round r trains at the same point of the schedule
    as epoch (r-1) x local-epochs of a centralized run.
    """
    epochs = settings.num_server_rounds * settings.local_epochs
    fixed = [f"schedule.lr={settings.lr}", f"schedule.batch_size={settings.batch_size}", f"schedule.epochs={epochs}",
             f"schedule.warmup_epochs={settings.warmup_rounds * settings.local_epochs}", f"seed={settings.seed}",
             f"output_dir={settings.out_dir}"]
    return load_config(settings.config, shlex.split(settings.overrides) + fixed)




@dataclass
class ClientData:
    """One client's videos: `train` for local training, `val` (held out from it) for local evaluation."""

    train: list[VideoRecord]
    val: list[VideoRecord]
    root: str  # the folder the list's paths are relative to
    stream: int  # the client's index for seeding its epochs: its partition id, or a checksum of its list
    source: str  # the list file, for messages


def hold_out(records: list[VideoRecord], fraction: float, seed: int) -> tuple[list[VideoRecord], list[VideoRecord]]:
    """A seeded (train, val) split of a client's list; at least one video each side when fraction > 0."""
    if not fraction:
        return records, []
    order = np.random.default_rng([seed, len(records)]).permutation(len(records))
    count = min(max(1, round(fraction * len(records))), len(records) - 1)
    val = set(order[:count].tolist())
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
                "backbone-weights=\"/weights/backbone.pth\"'")


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
            public = f"node config {key}: no such {'folder' if key == 'video-root' else 'file'} on this site ({meaning})"
            raise SiteConfigError(public.replace(f"{key}:", f"{key}={node_config[key]!r}:", 1), public)
        paths[key] = os.path.abspath(path)
    return paths


def client_setup(node_config: dict, settings: FederatedSettings):
    """The experiment config and the videos of this client: a deployed site or a simulated partition.

    Deployment (`list-file` in the node config): the site's own list, video root and backbone
    weights, so nothing but code comes with the app. Its epochs are seeded by a checksum of its
    list: node ids are drawn anew at each registration, the list is the site's. Simulation
    (`partition-id`, set by the engine): `client_{partition-id:03d}.txt` in `partition-dir`, under
    the config's data root.
    """
    cfg = experiment_config(settings)
    if "list-file" in node_config or "partition-id" not in node_config:
        site = site_paths(node_config)
        cfg.model.backbone.checkpoint, cfg.model.backbone.pretrained = site["backbone-weights"], None
        path, root = site["list-file"], site["video-root"]
        with open(path, "rb") as f:
            stream = zlib.crc32(f.read())
    else:
        partition = int(node_config["partition-id"])
        path, root, stream = os.path.join(settings.partition_dir, f"client_{partition:03d}.txt"), cfg.data.root, partition
        if not os.path.isfile(path):
            raise FileNotFoundError(f"partition {partition}: {os.path.abspath(path)} does not exist; write the "
                                    f"partitions with `aimfl partition LIST --out DIR` and set partition-dir=DIR in "
                                    f"the run config")
    train, val = hold_out(read_annotations(path, "list"), settings.local_val_fraction, settings.seed)
    return cfg, ClientData(train, val, root, stream, path)


def train_round(model: torch.nn.Module, cfg, data: ClientData, server_round: int, local_epochs: int,
                proximal_mu: float, device: torch.device, show_progress: bool = False) -> dict:
    """`local_epochs` epochs of local training from the weights already in `model`; returns the reply metrics."""
    from aim_core.train import make_loader
    from aim_core.training import build_trainer, run_epoch
    from aim_core.video_data import VideoDataset

    started = time.time()
    sched = cfg.schedule
    dataset = VideoDataset(data.train, data.root, cfg.data, cfg.model.backbone.mean, cfg.model.backbone.std,
                           train=True, seed=cfg.seed)
    per_batch = sched.batch_size // sched.accumulation_steps
    loader, _ = make_loader(dataset, per_batch, True, 0, 1, cfg.seed, cfg.data.num_workers)
    updates_per_epoch = len(loader) // sched.accumulation_steps
    if updates_per_epoch == 0:
        raise ValueError(f"{data.source}: {len(dataset)} training videos make no optimiser update at batch size "
                         f"{sched.batch_size}; give this client more videos or lower batch-size")
    trainer = build_trainer(model, cfg, device, updates_per_epoch)
    trainer.start_at((server_round - 1) * local_epochs * updates_per_epoch)
    trainer.anchor_proximal(proximal_mu)
    loss, clips, skipped = 0.0, 0, 0
    for local_epoch in range(local_epochs):
        epoch = (server_round - 1) * local_epochs + local_epoch
        stats = run_epoch(trainer, loader, epoch, cfg.seed, stream=data.stream, show_progress=show_progress,
                          desc=f"round {server_round} epoch {local_epoch + 1}/{local_epochs}")
        loss += stats["loss"] * stats["clips"]
        clips += stats["clips"]
        skipped += stats["skipped"]
    return {"train-loss": loss / max(clips, 1), "num-examples": len(dataset), "skipped-videos": skipped,
            "train-seconds": time.time() - started}


def evaluate_records(model: torch.nn.Module, cfg, records: list[VideoRecord], root: str, device: torch.device,
                     order_pairs=None, progress: bool = False) -> dict:
    """Multi-view evaluation (as `aimfl eval`) of `model` on `records`: the report plus `loss` and `skipped`."""
    from torch.utils.data import DataLoader

    from aim_core.evaluation import evaluate, report
    from aim_core.training import resolve_precision
    from aim_core.video_data import VideoDataset

    dataset = VideoDataset(records, root, cfg.data, cfg.model.backbone.mean, cfg.model.backbone.std, train=False,
                           seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=max(1, cfg.schedule.batch_size // 2), num_workers=cfg.data.num_workers)
    result = evaluate(model, loader, device, cfg.data.max_views_per_forward,
                      resolve_precision(cfg.schedule.precision, device), progress=progress)
    picked = result["probs"][np.arange(len(result["labels"])), result["labels"]]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return {**report(result["probs"], result["labels"], order_pairs), "loss": loss, "skipped": result["skipped"]}
