"""Checkpoint I/O: one atomic writer, trainable-state files and resumable training states.

- `atomic_write` writes every file through a temporary beside it and renames it into place, so a
  crash mid-save never leaves a half-written checkpoint under the real name.
- Trainable-state files (`.safetensors`) hold only the trainable set, with metadata naming the
  backbone, the experiment config (enough to rebuild the model and its test transform) and the
  shapes. `aimfl eval`, `aimfl predict` and federated runs all read and write this one format.
- Training states (`last.pt`) hold plain containers of tensors and numbers, and are read with
  `weights_only=True`: a crafted file cannot run code when it is resumed from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from aim_core.model.trainable import TrainableStateError, load_trainable_state, trainable_state

FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not what it should be."""


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Calls `write(temporary_path)`, then renames the temporary file to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def backbone_id(config: dict) -> str:
    backbone = config["model"]["backbone"]
    return f"{backbone['family']}:{backbone['name']}"


def save_trainable(model: nn.Module, path: str, config: dict, extra: dict[str, str] | None = None) -> None:
    """Writes the model's trainable state as safetensors, with metadata (see the module docstring)."""
    state = {k: v.contiguous().cpu() for k, v in trainable_state(model).items()}
    metadata = {
        "format": "aimfl-trainable",
        "format_version": FORMAT_VERSION,
        "backbone": backbone_id(config),
        "config": json.dumps(config, sort_keys=True),
        "shapes": json.dumps({k: list(v.shape) for k, v in state.items()}),
        **(extra or {}),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def _open_trainable(path: str):
    if not os.path.isfile(path):
        raise CheckpointError(f"trainable-state file {path} does not exist")
    try:
        handle = safe_open(path, framework="pt")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from err
    if (handle.metadata() or {}).get("format") != "aimfl-trainable":
        raise CheckpointError(f"{path} is not an aimfl trainable-state file (no aimfl metadata)")
    return handle


def read_trainable(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state and the metadata of a file written by `save_trainable`."""
    with _open_trainable(path) as f:
        try:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
        except SafetensorError as err:
            raise CheckpointError(f"{path} is truncated or damaged: {err}") from err


def stored_config(path: str) -> dict:
    """The experiment config a trainable-state file was written with (its metadata; no tensor is read)."""
    with _open_trainable(path) as f:
        text = f.metadata().get("config")
    try:
        config = json.loads(text)
    except (TypeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: its metadata holds no readable config") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its metadata holds no readable config")
    return config


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


def save_training_state(state: dict, path: str) -> None:
    """A resumable state (tensors, numbers, strings and containers of them only), written atomically."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str) -> dict:
    """Reads a state written by `save_training_state`; nothing in the file can execute code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or a pickle asking for code: all refused the same way
        raise CheckpointError(f"{path} is not a readable aimfl checkpoint: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an aimfl checkpoint (it holds a {type(state).__name__})")
    return state
