"""The trainable set, defined once, and its on-disk format.

AIM trains what it adds to the image model plus the last norm and the classifier:
every `Adapter`, the temporal embedding (and Swin's temporal position bias), the final
norm and the head. Everything else stays frozen. Centralized training, the optimiser,
checkpoints and federated updates all use `trainable_names` and nothing else.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from aim_core.adapter import Adapter

FORMAT_VERSION = "1"


class TrainableStateError(ValueError):
    """A trainable-state file does not fit the model it is loaded onto."""


def _added_module_types() -> tuple[type, ...]:
    from aim_core.model import ClassifierHead, TemporalEmbedding
    from aim_core.swin import TemporalRelativeBias

    return (Adapter, TemporalEmbedding, TemporalRelativeBias, ClassifierHead)


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters AIM trains, in `named_parameters` order."""
    if model.full_finetune:
        return [name for name, _ in model.named_parameters()]
    added = _added_module_types()
    names: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, added) or module is model.norm:
            names.update(f"{module_name}.{p}" for p, _ in module.named_parameters())
    return [name for name, _ in model.named_parameters() if name in names]


def freeze_for_training(model: nn.Module) -> None:
    keep = set(trainable_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)


def count_parameters(model: nn.Module) -> dict[str, int]:
    params = dict(model.named_parameters())
    return {
        "total_params": sum(p.numel() for p in params.values()),
        "trainable_params": sum(params[n].numel() for n in trainable_names(model)),
    }


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, detached (they share storage with the model)."""
    params = dict(model.named_parameters())
    return {name: params[name].detach() for name in trainable_names(model)}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state") -> None:
    """Copies `state` into the model's trainable parameters; the key set and shapes must match exactly."""
    params = dict(model.named_parameters())
    expected = trainable_names(model)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in params or k not in expected]
    if missing or unexpected:
        raise TrainableStateError(
            f"{source} does not fit this model: {len(missing)} trainable keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    wrong = [(k, tuple(state[k].shape), tuple(params[k].shape)) for k in expected if state[k].shape != params[k].shape]
    if wrong:
        raise TrainableStateError(f"{source} does not fit this model: shape mismatch (key, file, model): {wrong[:3]}")
    with torch.no_grad():
        for k in expected:
            params[k].copy_(state[k])


def backbone_id(config: dict) -> str:
    backbone = config["model"]["backbone"]
    return f"{backbone['family']}:{backbone['name']}"


def save_trainable(model: nn.Module, path: str, config: dict, extra: dict[str, str] | None = None) -> None:
    """Writes the trainable state as safetensors, atomically, with metadata naming the backbone, the
    experiment config (model and data: enough to rebuild the model and its test transform) and the shapes."""
    state = {k: v.contiguous().cpu() for k, v in trainable_state(model).items()}
    metadata = {
        "format": "aimfl-trainable",
        "format_version": FORMAT_VERSION,
        "backbone": backbone_id(config),
        "config": json.dumps(config, sort_keys=True),
        "shapes": json.dumps({k: list(v.shape) for k, v in state.items()}),
        **(extra or {}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(state, tmp, metadata=metadata)
    os.replace(tmp, path)


def read_trainable(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"trainable-state file {path} does not exist")
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != "aimfl-trainable":
            raise TrainableStateError(f"{path} is not an aimfl trainable-state file (no aimfl metadata)")
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


def load_trainable(model: nn.Module, path: str, config: dict) -> dict[str, str]:
    """Loads a file written by `save_trainable` onto the model of `config`; a file for another
    backbone is a clear error."""
    state, metadata = read_trainable(path)
    backbone = backbone_id(config)
    if metadata["backbone"] != backbone:
        raise TrainableStateError(
            f"{path} holds adapters for backbone {metadata['backbone']}, but this model's backbone is {backbone}"
        )
    load_trainable_state(model, state, source=path)
    return metadata
