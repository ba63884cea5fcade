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


NPY_HEADER_BYTES = 4096  # an .npy header (magic, dtype, shape) is far smaller; more is not a plain array


def update_problem(record: ArrayRecord, sent: dict[str, np.ndarray], dtype: str,
                   max_norm: float) -> tuple[str | None, float | None]:
    """Why a client's reply cannot be aggregated (None if it can), and its update norm ||reply - sent||.

    `sent` is the global state the client received (fp32 numpy arrays by key). The key set, the declared shapes and
    dtypes, and the size of every array's bytes are checked before anything is decoded, so an oversized or
    malformed reply costs no copy; then the decoded arrays' real shapes, finiteness and the update's L2 norm,
    summed in float64 (a float32 sum overflows at 1e19 and lets 1e30 through as inf), against `max_norm`.
    """
    missing, unexpected = sorted(sent.keys() - record.keys()), sorted(record.keys() - sent.keys())
    if missing or unexpected:
        return (f"key set differs: {len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected "
                f"{unexpected[:3]}"), None
    wire = np.dtype(UPDATE_DTYPES[dtype])
    for key, reference in sent.items():
        array = record[key]
        if tuple(array.shape) != reference.shape:
            return f"{key}: shape {tuple(array.shape)}, expected {reference.shape}", None
        if array.stype != "numpy.ndarray" or array.dtype != wire.name:
            return f"{key}: dtype {array.dtype} ({array.stype}), expected {wire}", None
        if len(array.data) > reference.size * wire.itemsize + NPY_HEADER_BYTES:
            return f"{key}: {len(array.data):,} bytes for {reference.size:,} values of {wire}", None
    squared = 0.0
    for key, reference in sent.items():
        try:
            values = record[key].numpy()
        except ValueError as err:  # bytes that are not an .npy array
            return f"{key}: not a readable array ({err})", None
        if values.shape != reference.shape or values.dtype != wire:
            return f"{key}: its bytes hold {values.dtype} {values.shape}, not {wire} {reference.shape}", None
        if not np.isfinite(values).all():
            return f"{key}: non-finite values", None
        difference = np.subtract(values, reference, dtype=np.float64)
        squared += float(np.dot(difference.ravel(), difference.ravel()))
    norm = math.sqrt(squared)
    if not norm <= max_norm:
        return f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}", norm
    return None, norm
