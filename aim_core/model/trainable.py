"""The trainable set, defined once.

AIM trains what it adds to the image model plus the last norm and the classifier: every
adapter, the temporal embedding (and Swin's temporal position bias), the final norm and the
head. Each of those modules says which of its parameters it trains (`adapter_params()`, as
torchtune's adapters do), so this module knows no model file; everything else stays frozen.
Centralized training, the optimiser, checkpoints and federated updates all use
`trainable_names` and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn


class TrainableStateError(ValueError):
    """A trainable state (a file, a checkpoint, a client's update) does not fit the model it is loaded onto."""


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters AIM trains, in `named_parameters` order: what every module's `adapter_params()`
    declares, or every parameter when the model is fully fine-tuned."""
    if model.full_finetune:
        return [name for name, _ in model.named_parameters()]
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declared = getattr(module, "adapter_params", None)
        if callable(declared):
            names.update(f"{prefix}.{name}" if prefix else name for name in declared())
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
