"""Update codecs: exact where they claim to be, bounded where they quantize, and every malformed reply named."""

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from aim_core.federated.codec import (
    MASK,
    SCALE,
    check_encoded,
    decode_state,
    decode_update,
    encode_state,
    encode_update,
    kept_values,
    payload_bytes,
)


def states(seed=0):
    g = torch.Generator().manual_seed(seed)
    received = {"fc1.weight": torch.randn(24, 16, generator=g),
                "fc1.bias": torch.randn(21, generator=g),  # 21: its top-k mask has 3 padding bits
                "temporal_embedding.weight": torch.randn(8, 16, generator=g)}
    trained = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in received.items()}
    return received, trained


def numpy_state(state):
    return {k: v.numpy() for k, v in state.items()}


def roundtrip(codec, fraction=0.05, residual=None):
    received, trained = states()
    record, new_residual = encode_update(trained, received, codec, fraction, residual)
    sent = numpy_state(received)
    assert check_encoded(record, sent, codec, fraction) is None
    decoded, problem = decode_update(record, sent, codec, fraction)
    assert problem is None
    return received, trained, record, decoded, new_residual


def test_fp32_is_exact_and_costs_four_bytes_a_value():
    _, trained, record, decoded, _ = roundtrip("fp32")
    for k, v in trained.items():
        np.testing.assert_array_equal(decoded[k], v.numpy())
    assert payload_bytes(record) == 4 * sum(v.numel() for v in trained.values())


def test_int8_error_is_within_half_a_step_of_each_tensors_scale_at_a_quarter_of_the_bytes():
    received, trained, record, decoded, _ = roundtrip("int8")
    for k, v in trained.items():
        update = (v - received[k]).numpy()
        step = np.abs(update).max() / 127
        assert (np.abs(decoded[k] - v.numpy()) <= step / 2 + 1e-6).all()
    values = sum(v.numel() for v in trained.values())
    assert payload_bytes(record) == values + 4 * 3  # a byte a value, a float32 scale a tensor


def test_int8_downlink_restores_the_state_within_its_step():
    received, _ = states()
    decoded = decode_state(encode_state(received, "int8"))
    for k, v in received.items():
        rows = v.reshape(v.shape[0] if v.ndim >= 2 else 1, -1)
        step = rows.abs().amax(dim=1) / 127
        assert ((decoded[k] - v).abs().reshape(rows.shape) <= step[:, None] / 2 + 1e-6).all()


def test_topk_sends_the_largest_values_and_keeps_the_rest_as_residual():
    received, trained, record, decoded, residual = roundtrip("topk", fraction=0.1)
    for k, v in trained.items():
        update = v - received[k]
        sent_part = torch.from_numpy(decoded[k]) - received[k]
        # what was sent plus what stays equals the update exactly (up to float32 addition)
        torch.testing.assert_close(sent_part + residual[k], update, rtol=0, atol=1e-6)
        kept = kept_values(v.numel(), 0.1)
        chosen = np.unpackbits(record[k + MASK].numpy())[:v.numel()].astype(bool)
        assert chosen.sum() == kept and int((sent_part != 0).sum()) <= kept
        step = update.flatten()[chosen].abs().max() / 7
        assert residual[k].flatten()[chosen].abs().max() <= step / 2 + 1e-6  # a sent value's 4-bit rounding stays
        assert residual[k].flatten()[~chosen].abs().max() <= update.flatten()[chosen].abs().min()  # none larger left
    code_bytes = sum(math.ceil(kept_values(v.numel(), 0.1) / 2) for v in trained.values())
    mask_bytes = sum(math.ceil(v.numel() / 8) for v in trained.values())
    assert payload_bytes(record) == code_bytes + mask_bytes + 4 * 3  # 4-bit codes, a bit a position, a scale a tensor


def test_error_feedback_sends_every_coordinates_mass_eventually():
    """The same update every round: with the residual, the sum sent over rounds tracks the sum of the updates, and
    the residual stays bounded; without it the small coordinates are never sent."""
    g = torch.Generator().manual_seed(1)
    update = {"w": torch.rand(200, generator=g) + 0.5}
    zero = {"w": torch.zeros(200)}
    residual, sent_total, rounds = None, torch.zeros(200), 100
    for _ in range(rounds):
        record, residual = encode_update(update, zero, "topk", 0.05, residual)
        decoded, _ = decode_update(record, {"w": np.zeros(200, np.float32)}, "topk", 0.05)
        sent_total += torch.from_numpy(decoded["w"])
    # conservation: sent + residual == every update summed
    torch.testing.assert_close(sent_total + residual["w"], rounds * update["w"], rtol=0, atol=1e-3)
    assert (sent_total > 0).all()  # every coordinate was sent at least once
    # bounded: about the steady-state sending threshold (the updates' sum over the 10 values sent a round), however
    # many rounds ran
    assert residual["w"].abs().max() <= 2 * update["w"].sum() / 10
    record, _ = encode_update(update, zero, "topk", 0.05, None)
    chosen = np.unpackbits(record["w" + MASK].numpy())[:200].astype(bool)
    assert (np.flatnonzero(chosen) == np.sort(update["w"].topk(10).indices.numpy())).all()


def tamper(record: ArrayRecord, name: str, value) -> ArrayRecord:
    arrays = {k: torch.from_numpy(record[k].numpy().copy()) for k in record.keys()}
    if value is None:
        del arrays[name]
    else:
        arrays[name] = value
    return ArrayRecord(arrays)


@pytest.mark.parametrize("codec,name,value,reason", [
    ("topk", "fc1.weight" + MASK, "one_more", "21 positions for 20 values"),
    ("topk", "fc1.weight" + MASK, "one_less", "19 positions for 20 values"),
    ("topk", "fc1.bias" + MASK, "beyond", "positions beyond the tensor's 21 values"),
    ("topk", "fc1.weight" + MASK, "longer", "shape (49,), expected (48,)"),
    ("topk", "fc1.weight", "float32", "expected uint8"),
    ("topk", "fc1.weight", "longer", "shape (11,), expected (10,)"),
    ("topk", "fc1.weight" + SCALE, "nan", "scales must be finite"),
    ("int8", "fc1.weight" + SCALE, "nan", "scales must be finite"),
    ("int8", "fc1.weight" + SCALE, None, "missing"),
    ("int8", "fc1.weight", "wide", "expected int8"),
    ("fp32", "extra", "extra", "unexpected"),
])
def test_a_malformed_compressed_reply_is_rejected_with_its_reason(codec, name, value, reason):
    received, trained = states()
    record, _ = encode_update(trained, received, codec, 0.05, None)
    original = record[name].numpy() if name in record else None
    bits = np.unpackbits(original) if original is not None and original.dtype == np.uint8 else None
    replacements = {
        "beyond": lambda: torch.from_numpy(np.packbits(np.where(np.arange(bits.size) == bits.size - 1, 1, bits))),
        "one_more": lambda: torch.from_numpy(np.packbits(np.where(np.arange(bits.size) == np.argmin(bits), 1, bits))),
        "one_less": lambda: torch.from_numpy(np.packbits(np.where(np.arange(bits.size) == np.argmax(bits), 0, bits))),
        "longer": lambda: torch.zeros(original.size + 1, dtype=torch.uint8),
        "float32": lambda: torch.from_numpy(original.astype(np.float32)),
        "nan": lambda: torch.full(original.shape, math.nan),
        "wide": lambda: torch.from_numpy(original.astype(np.int16)),
        "extra": lambda: torch.zeros(3),
    }
    bad = tamper(record, name, None if value is None else replacements[value]())
    sent = numpy_state(received)
    problem = check_encoded(bad, sent, codec, 0.05)
    if problem is None:
        _, problem = decode_update(bad, sent, codec, 0.05)
    assert problem is not None and reason in problem
