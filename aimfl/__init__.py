"""aimfl: AIM adapters on frozen image transformers for video, trained centrally or federated with Flower.

The public API; the `aimfl` command line is a thin layer over it.

    import aimfl

    cfg = aimfl.load_config("synthetic", ["data.root=data/synthetic"])
    model = aimfl.build_model(cfg)                            # frozen backbone + AIM adapters
    trainer = aimfl.build_trainer(model, cfg, device, updates_per_epoch=15)
    loss = trainer.step(video, labels)                        # one training step: (B, T, 3, H, W), (B,)
    report = aimfl.evaluate(model, cfg)                       # the val list, views averaged as the paper tests
    aimfl.save_adapters(model, "adapters.safetensors", cfg)   # the trainable state only
    aimfl.load_adapters(model, "adapters.safetensors", cfg)
    probs = aimfl.predict(model, cfg, "clip.mp4")             # class probabilities of one video
    final = aimfl.train(cfg)                                  # the whole `aimfl train` recipe (DDP under torchrun)

The library layers underneath (`aim_core.model`, `.data`, `.engine`, `.federated`) and the Flower apps
(`server/`, `client/`) never import this package.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version

import torch
from torch import nn

from aim_core.config import load_config, to_dict
from aim_core.data.annotations import VideoRecord, class_names_of, read_annotations
from aim_core.data.video import VideoReadError, video_dataset
from aim_core.engine.checkpoint import load_trainable, save_trainable
from aim_core.engine.evaluation import average_view_probabilities, evaluate_records
from aim_core.engine.precision import default_device, resolve_precision
from aim_core.engine.step import Trainer, build_trainer
from aim_core.model import factory
from aimfl.train import run as train

try:
    __version__ = version("aimfl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = ["Trainer", "build_model", "build_trainer", "evaluate", "load_adapters", "load_config", "predict",
           "save_adapters", "train"]


def build_model(cfg) -> nn.Module:
    """The AIM video model of a full config, with only its trainable set requiring gradients; its random weights are
    drawn from `cfg.seed`, as in training."""
    return factory.build_model(cfg.model, seed=cfg.seed)


def save_adapters(model: nn.Module, path: str, cfg, **metadata: str) -> None:
    """Writes the trainable state (adapters, temporal embedding, final norm, head) as safetensors, with the config
    and class names in its metadata, as training runs write `final.safetensors`."""
    save_trainable(model, path, to_dict(cfg), {"class_names": json.dumps(class_names_of(cfg.data)), **metadata})


def load_adapters(model: nn.Module, path: str, cfg) -> dict[str, str]:
    """Loads a trainable-state file onto `model` (built from `cfg`); returns the file's metadata."""
    return load_trainable(model, path, to_dict(cfg))


def evaluate(model: nn.Module, cfg, list_file: str | None = None, root: str | None = None,
             device: torch.device | None = None, progress: bool = False) -> dict:
    """Multi-view evaluation of `model` on a video list (default: the config's val list under its data root)."""
    records = read_annotations(list_file or cfg.data.val_list, cfg.data.list_format, cfg.data.class_names,
                               cfg.data.num_classes)
    device = device or default_device()
    return evaluate_records(model.to(device).eval(), cfg, records, cfg.data.val_root if root is None else root, device,
                            progress)


def predict(model: nn.Module, cfg, video: str, device: torch.device | None = None) -> torch.Tensor:
    """Class probabilities of one video file, averaged over its test views."""
    device = device or default_device()
    path = os.path.abspath(video)
    dataset = video_dataset(cfg, [VideoRecord(path, 0)], "", train=False)
    try:
        views = dataset.load(dataset.records[0])
    except VideoReadError as err:
        raise VideoReadError(f"cannot read {path}: {err}") from err
    return average_view_probabilities(model.to(device).eval(), views[None].to(device),
                                      cfg.data.max_views_per_forward,
                                      resolve_precision(cfg.schedule.precision, device))[0].cpu()
