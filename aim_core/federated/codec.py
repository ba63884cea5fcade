"""Update codecs: how a client's trained state (uplink) and the global state (downlink) travel as ArrayRecords.

- `fp32`, `fp16`: the state itself, in that dtype (bf16 is cast).
- `int8`: the update (state minus the state the client received) as int8 with one fp32 scale per tensor: 1 byte a
  value and 4 a tensor, 3.99x fewer bytes than fp32 for AIM's trainable set (a scale per row cost 4 bytes a row,
  3.6x). As a downlink codec, the state itself, with a scale per row of each matrix: a state's rows differ in
  magnitude (a weight matrix's output rows), an update's AdamW-made values much less.
- `topk`: the `topk-fraction` largest-magnitude values of the update per tensor: a bitmask of their positions in the
  flattened tensor (1 bit a value of the tensor) and their 4-bit codes in position order, two to a byte, with one
  fp32 scale per tensor: 1/8 + fraction/2 bytes a value, 10.6x fewer than fp32 at fraction 0.5 on the demo's AIM
  (int8 codes reach 10x only at fraction 0.25, int32 indices and fp16 values, 6 bytes a kept value, only below
  0.067). What is not sent, the unkept values and the 4-bit rounding of the kept ones, stays in the client's
  error-feedback residual and is added to its next update, so every coordinate's mass is sent eventually (Stich et
  al., 2018; Karimireddy et al., 2019). The residual never leaves the client. Uplink only: a client holds no
  earlier global state to apply a sparse downlink to.

The arrays of a tensor `k` are named `k` (the values, the int8 codes or the packed 4-bit codes), `k#scale`, `k#mask`.
`check_encoded` is the server's check of a reply's structure before anything is decoded: the array names, dtypes,
shapes and byte sizes a codec allows for the state the client was sent; `decode_update` then reads the values back as
a full fp32 state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from flwr.app import ArrayRecord

CODECS = ("fp32", "fp16", "int8", "topk")
DOWNLINK_CODECS = ("fp32", "fp16", "int8")
NPY_HEADER_BYTES = 4096  # an .npy header (magic, dtype, shape) is far smaller; more is not a plain array
SCALE, MASK = "#scale", "#mask"


def rows_of(shape: tuple[int, ...], per_row: bool) -> int:
    """Rows that get their own int8 scale: the first dimension of a matrix or more (per_row), else one."""
    return shape[0] if per_row and len(shape) >= 2 else 1


def kept_values(size: int, fraction: float) -> int:
    """How many values of a tensor of `size` top-k sends: at least one."""
    return min(size, max(1, math.ceil(fraction * size)))


def quantize(values: torch.Tensor, per_row: bool, levels: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes in [-levels, levels], fp32 scales, one a row or one in all): values ~= codes * scale, symmetric,
    the largest magnitude of a row at `levels` (127: int8; 7: the 4-bit codes of top-k)."""
    rows = values.reshape(rows_of(tuple(values.shape), per_row), -1).float()
    scale = rows.abs().amax(dim=1) / levels
    codes = torch.round(rows / torch.where(scale > 0, scale, 1)[:, None]).clamp_(-levels, levels).to(torch.int8)
    return codes.reshape(values.shape), scale


INT4_LEVELS = 7  # 4-bit codes -7..7, stored with an offset of 8 as one nibble each


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes in [-7, 7] as uint8, two to a byte (the first in the high nibble; an odd count pads the last low one)."""
    nibbles = (codes.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.full((1,), 8, dtype=torch.uint8)])
    return nibbles[0::2] * 16 + nibbles[1::2]


def unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    """The `count` codes `pack_int4` packed, as float32 in [-8, 7]."""
    nibbles = np.stack([packed >> 4, packed & 15], axis=1).ravel()[:count]
    return nibbles.astype(np.float32) - 8


def dequantize_int8(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows = codes.reshape(scale.size, -1).astype(np.float32) * scale[:, None]
    return rows.reshape(codes.shape)


def encode_state(state: dict[str, torch.Tensor], codec: str) -> ArrayRecord:
    """The global state (or a state in full) for the downlink: fp32, fp16, or int8 with per-row scales."""
    if codec not in DOWNLINK_CODECS:
        raise ValueError(f"downlink codec {codec!r}; choose one of {', '.join(DOWNLINK_CODECS)}")
    if codec == "int8":
        arrays = {}
        for key, value in state.items():
            codes, scale = quantize(value.detach().cpu(), per_row=True)
            arrays[key], arrays[key + SCALE] = codes.contiguous(), scale.contiguous()
        return ArrayRecord(arrays)
    wire = torch.float32 if codec == "fp32" else torch.float16
    return ArrayRecord({k: v.detach().to("cpu", wire).contiguous() for k, v in state.items()})


def decode_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A state sent by `encode_state` (any downlink codec) as fp32 tensors."""
    keys = [k for k in record.keys() if SCALE not in k]
    if any(k + SCALE in record for k in keys):
        return {k: torch.from_numpy(dequantize_int8(record[k].numpy(), record[k + SCALE].numpy())) for k in keys}
    return {k: torch.from_numpy(record[k].numpy()).float() for k in keys}


def encode_update(state: dict[str, torch.Tensor], received: dict[str, torch.Tensor], codec: str, fraction: float,
                  residual: dict[str, torch.Tensor] | None) -> tuple[ArrayRecord, dict[str, torch.Tensor] | None]:
    """A client's reply: its trained `state` as `codec` sends it, relative to the `received` global state for int8
    and top-k. Returns the record and, for top-k, the new error-feedback residual (the update's unsent part)."""
    if codec in ("fp32", "fp16"):
        return encode_state(state, codec), None
    arrays, new_residual = {}, {}
    for key, value in state.items():
        update = value.detach().cpu().float() - received[key].cpu().float()
        if codec == "int8":
            arrays[key], arrays[key + SCALE] = (t.contiguous() for t in quantize(update, per_row=False))
            continue
        if residual is not None:
            update = update + residual[key]
        flat = update.flatten()
        index = flat.abs().topk(kept_values(flat.numel(), fraction), sorted=False).indices.sort().values
        codes, scale = quantize(flat[index], per_row=False, levels=INT4_LEVELS)
        unsent = flat.clone()
        unsent[index] -= codes.float() * scale  # what 4-bit rounding lost of a sent value stays in the residual too
        chosen = np.zeros(flat.numel(), dtype=bool)
        chosen[index.numpy()] = True
        arrays[key], arrays[key + SCALE] = pack_int4(codes), scale.contiguous()
        arrays[key + MASK] = torch.from_numpy(np.packbits(chosen))
        new_residual[key] = unsent.view_as(update)
    return ArrayRecord(arrays), (new_residual if codec == "topk" else None)


def expected_arrays(sent: dict[str, np.ndarray], codec: str, fraction: float) -> dict[str, tuple[str, tuple]]:
    """name -> (dtype, shape) of every array a reply in `codec` holds for the state `sent`."""
    expected = {}
    for key, reference in sent.items():
        if codec in ("fp32", "fp16"):
            expected[key] = ("float32" if codec == "fp32" else "float16", reference.shape)
        elif codec == "int8":
            expected[key] = ("int8", reference.shape)
            expected[key + SCALE] = ("float32", (1,))
        else:
            packed = math.ceil(kept_values(reference.size, fraction) / 2)
            expected[key], expected[key + SCALE] = ("uint8", (packed,)), ("float32", (1,))
            expected[key + MASK] = ("uint8", (math.ceil(reference.size / 8),))
    return expected


def check_encoded(record: ArrayRecord, sent: dict[str, np.ndarray], codec: str, fraction: float) -> str | None:
    """Why a reply's structure does not fit `codec` for the state `sent` (None if it does), read from the arrays'
    declared names, dtypes, shapes and byte sizes only: nothing is decoded yet, so an oversized reply costs no copy."""
    expected = expected_arrays(sent, codec, fraction)
    missing, unexpected = sorted(expected.keys() - record.keys()), sorted(record.keys() - expected.keys())
    if missing or unexpected:
        return (f"array set differs from a {codec} update: {len(missing)} missing {missing[:3]}, {len(unexpected)} "
                f"unexpected {unexpected[:3]}")
    for name, (dtype, shape) in expected.items():
        array = record[name]
        if tuple(array.shape) != shape:
            return f"{name}: shape {tuple(array.shape)}, expected {shape}"
        if array.stype != "numpy.ndarray" or array.dtype != dtype:
            return f"{name}: dtype {array.dtype} ({array.stype}), expected {dtype}"
        if len(array.data) > math.prod(shape) * np.dtype(dtype).itemsize + NPY_HEADER_BYTES:
            return f"{name}: {len(array.data):,} bytes for {math.prod(shape):,} values of {dtype}"
    return None


def decode_update(record: ArrayRecord, sent: dict[str, np.ndarray], codec: str,
                  fraction: float) -> tuple[dict[str, np.ndarray] | None, str | None]:
    """(the client's state as fp32 arrays, None) from a reply `check_encoded` accepted, or (None, why not): bytes
    that are not the arrays they declare, a top-k mask that marks other positions than values sent, non-finite
    values or scales."""
    state = {}
    try:
        for key, reference in sent.items():
            values = record[key].numpy()
            if codec in ("fp32", "fp16"):
                decoded = values.astype(np.float32)
            else:
                scale = record[key + SCALE].numpy()
                if not np.isfinite(scale).all() or (scale < 0).any():
                    return None, f"{key}{SCALE}: scales must be finite and not negative"
            if codec == "int8":
                decoded = reference + dequantize_int8(values, scale)
            elif codec == "topk":
                bits = np.unpackbits(record[key + MASK].numpy())
                if bits[reference.size:].any():
                    return None, f"{key}{MASK}: positions beyond the tensor's {reference.size} values"
                chosen = bits[:reference.size].astype(bool)
                kept, expected = int(chosen.sum()), kept_values(reference.size, fraction)
                if kept != expected:
                    return None, f"{key}{MASK}: {kept} positions for {expected} values"
                decoded = reference.copy().ravel()
                decoded[chosen] += unpack_int4(values, kept) * scale
                decoded = decoded.reshape(reference.shape)
            if decoded.shape != reference.shape:
                return None, f"{key}: its bytes hold {decoded.shape}, not {reference.shape}"
            if not np.isfinite(decoded).all():
                return None, f"{key}: non-finite values"
            state[key] = decoded
    except ValueError as err:  # bytes that are not an .npy array, or not the dtype and shape declared
        return None, f"not readable arrays ({err})"
    return state, None


def update_problem(record: ArrayRecord, sent: dict[str, np.ndarray], codec: str, fraction: float,
                   max_norm: float) -> tuple[str | None, float | None, dict[str, np.ndarray] | None]:
    """Why a client's reply cannot be aggregated (None if it can), its update norm ||state - sent|| and its state.

    `sent` is the global state the client received (fp32 numpy arrays by key). The structure is checked before
    anything is decoded (`check_encoded`), then the decoded values (`decode_update`), then the update's L2 norm,
    summed in float64 (a float32 sum overflows at 1e19 and lets 1e30 through as inf), against `max_norm`.
    """
    problem = check_encoded(record, sent, codec, fraction)
    if problem:
        return problem, None, None
    state, problem = decode_update(record, sent, codec, fraction)
    if problem:
        return problem, None, None
    squared = 0.0
    for key, reference in sent.items():
        difference = np.subtract(state[key], reference, dtype=np.float64).ravel()
        squared += float(np.dot(difference, difference))
    norm = math.sqrt(squared)
    if not norm <= max_norm:
        return f"update norm {norm:.4g} exceeds the bound {max_norm:.4g}", norm, None
    return None, norm, state


def payload_bytes(record: ArrayRecord) -> int:
    """The bytes of the arrays themselves (elements x element size), without record framing: what a codec costs."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in record.values())
