"""The wire format of federated AIM: the trainable state only, the same key set in both directions.

A state travels as an ArrayRecord in fp32 or fp16 (bf16 cannot be put in an ArrayRecord, so it is
cast). `update_problem` is the server's check of a client's reply before aggregation; it names
what is wrong.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord

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
