"""The federated update format and the server's reply checks."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from aim_core.federated.settings import FederatedSettings, default_run_config
from aim_core.federated.wire import decode_state, encode_state, payload_bytes, update_problem
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters, trainable_state
from server.strategy import RoundIncomplete, ValidatedRounds, build_strategy, senders


@pytest.fixture
def state(tiny_cfg):
    return {k: v.clone() for k, v in trainable_state(build_model(tiny_cfg("tiny_clip").model)).items()}


@pytest.mark.parametrize("dtype,size", [("fp32", 4), ("fp16", 2)])
def test_only_trainable_keys_travel_at_params_times_element_size(tiny_cfg, state, dtype, size):
    model = build_model(tiny_cfg("tiny_clip").model)
    record = encode_state(state, dtype)
    assert set(record.keys()) == set(state)
    assert payload_bytes(record) == count_parameters(model)["trainable_params"] * size
    back = decode_state(record)
    for k in state:
        assert back[k].dtype == torch.float32
        tolerance = 1e-3 if dtype == "fp16" else 0
        torch.testing.assert_close(back[k], state[k], rtol=tolerance, atol=tolerance)


def test_bf16_states_are_cast_for_the_wire(state):
    record = encode_state({k: v.bfloat16() for k, v in state.items()}, "fp16")
    assert {a.dtype for a in record.values()} == {"float16"}


def test_a_good_reply_passes_and_bad_ones_are_named(state):
    expected = {k: tuple(v.shape) for k, v in state.items()}
    good = encode_state(state, "fp32")
    assert update_problem(good, expected, "fp32", 10, sent=state, max_update_norm=1.0) is None

    nan = {k: v.clone() for k, v in state.items()}
    nan["head.fc.bias"][0] = float("nan")
    assert "non-finite" in update_problem(encode_state(nan, "fp32"), expected, "fp32", 10)

    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    assert "1 missing ['norm.weight']" in update_problem(encode_state(missing, "fp32"), expected, "fp32", 10)

    extra = ArrayRecord({**{k: v for k, v in state.items()}, "stem.vit.pos_embed": torch.zeros(3)})
    assert "unexpected ['stem.vit.pos_embed']" in update_problem(extra, expected, "fp32", 10)

    wrong_shape = {**state, "head.fc.bias": torch.zeros(7)}
    assert "head.fc.bias: shape (7,)" in update_problem(encode_state(wrong_shape, "fp32"), expected, "fp32", 10)

    assert "dtype float16" in update_problem(encode_state(state, "fp16"), expected, "fp32", 10)
    for bad in (0, -3, None, "10", True):
        assert "num-examples" in update_problem(good, expected, "fp32", bad)

    far = {k: v + 1.0 for k, v in state.items()}
    problem = update_problem(encode_state(far, "fp32"), expected, "fp32", 10, sent=state, max_update_norm=5.0)
    n = sum(v.numel() for v in state.values())
    assert f"update norm {np.sqrt(n):.4g} exceeds" in problem


def test_a_superlink_reply_for_a_lost_node_does_not_count_as_that_node_replying():
    settings = FederatedSettings.from_run_config({**default_run_config(), "min-nodes": 2})
    rounds = ValidatedRounds(build_strategy(settings), settings)

    def message(message_id, src, dst, reply_to=""):
        return SimpleNamespace(metadata=SimpleNamespace(message_id=message_id, src_node_id=src, dst_node_id=dst,
                                                        reply_to_message_id=reply_to))

    instructions = [message("to-a", 1, 11), message("to-b", 1, 22)]
    from_a, superlink_for_b = message("r1", 11, 1, "to-a"), message("r2", 1, 1, "to-b")  # node 1 is the SuperLink
    replies = senders(instructions, [from_a, superlink_for_b])
    assert replies == [(11, from_a), (22, superlink_for_b)]
    with pytest.raises(RoundIncomplete, match="1 of the 2 sampled nodes replied.*node\\(s\\) 22 did not"):
        rounds.check_replied(1, [11, 22], replies)
