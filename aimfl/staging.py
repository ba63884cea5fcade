"""What `aimfl demo` and `aimfl local-federation` both prepare: the synthetic world, the embedded image
model, the Flower run config of a federated run, and the console lines of their steps."""

from __future__ import annotations

import json
import os
import shlex

from aim_core.data.synthetic import make_synthetic
from aim_core.federated.settings import FederatedSettings, default_run_config
from aimfl.pretrain_image import ensure_image_model, is_foreign_weights


def step(number: int, text: str) -> None:
    print(f"\n[{number}/6] {text}", flush=True)


def federated_progress(line: str) -> None:
    """Echoes the lines of a `flwr run` log a person wants to follow; the whole log is kept on disk."""
    if any(mark in line for mark in ("[ROUND", "round ", "rejected", "ERROR", "Error", "Traceback", "done:")):
        print("    " + line.split(":      ", 1)[-1], end="", flush=True)


def prepare_world(data_root: str, sites: int | None = None) -> None:
    """The synthetic world at `data_root`, made unless it exists (with `sites` sites, when given)."""
    card_path = os.path.join(data_root, "synthetic.json")
    if not os.path.isfile(card_path):
        make_synthetic(data_root, **({"sites": sites} if sites else {}))
        return
    with open(card_path) as f:
        made_with = json.load(f)["sites"]
    if sites and made_with != sites:
        raise ValueError(f"{data_root} holds a synthetic world of {made_with} sites, not {sites}; "
                         f"give another folder (it is made if missing)")
    print("    exists, reused")


def prepare_backbone(cfg) -> None:
    """The embedded pre-trained image model at `cfg.model.backbone.checkpoint`, pre-trained unless cached; weights
    of one's own there (not made by `aimfl pretrain-image`) are used as they are, and a config without a
    checkpoint keeps its backbone's own weights."""
    if not cfg.model.backbone.checkpoint:
        print("    none: model.backbone.checkpoint is not set, the backbone keeps its own weights")
        return
    checkpoint = os.path.expanduser(cfg.model.backbone.checkpoint)
    if is_foreign_weights(checkpoint):
        print(f"    {checkpoint}: not the embedded model, used as it is")
        return
    card, trained = ensure_image_model(cfg, checkpoint)
    print(f"    pre-trained in {card['train_seconds']:.0f} s, val loss {card['val_loss']:.3f}" if trained
          else "    cached, reused")


def federated_run_config(cfg, config: str, overrides: tuple[str, ...], **keys) -> dict:
    """The Flower run config that trains `cfg` federated (the aimfl config named `config`, its data root (where set)
    and backbone weights fixed, plus `overrides`) with its lr, batch size and seed; `keys` sets the rest. Every value
    is checked here, before any process starts (a bad key is named)."""
    run_config = {
        "config": os.path.abspath(config) if os.path.isfile(config) else config,
        "overrides": shlex.join([*([f"data.root={cfg.data.root}"] if cfg.data.root else []),
                                 f"model.backbone.checkpoint={cfg.model.backbone.checkpoint}", *overrides]),
        "lr": cfg.schedule.lr, "batch-size": cfg.schedule.batch_size, "seed": cfg.seed,
        "client-eval-every": 0, "local-val-fraction": 0.0, **keys,
    }
    FederatedSettings.from_run_config({**default_run_config(), **run_config})
    return run_config
