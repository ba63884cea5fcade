"""The federated update format and the server's reply checks."""

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from aim_core.config import ConfigError, load_config
from aim_core.federated.codec import decode_state, encode_state, payload_bytes, update_problem
from aim_core.federated.settings import FederatedSettings, default_run_config, experiment_config
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters, trainable_state
from server.client_sizes import ClientSizes
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
    sent = {k: v.numpy() for k, v in state.items()}
    good = encode_state(state, "fp32")
    problem, norm, decoded = update_problem(good, sent, "fp32", 0.05, 1.0)
    assert (problem, norm) == (None, 0.0) and set(decoded) == set(state)

    nan = {k: v.clone() for k, v in state.items()}
    nan["head.fc.bias"][0] = float("nan")
    assert "non-finite" in update_problem(encode_state(nan, "fp32"), sent, "fp32", 0.05, 1.0)[0]

    missing = {k: v for k, v in state.items() if k != "norm.weight"}
    assert "1 missing ['norm.weight']" in update_problem(encode_state(missing, "fp32"), sent, "fp32", 0.05, 1.0)[0]

    extra = ArrayRecord({**{k: v for k, v in state.items()}, "stem.vit.pos_embed": torch.zeros(3)})
    assert "unexpected ['stem.vit.pos_embed']" in update_problem(extra, sent, "fp32", 0.05, 1.0)[0]

    wrong_shape = {**state, "head.fc.bias": torch.zeros(7)}
    assert "head.fc.bias: shape (7,)" in update_problem(encode_state(wrong_shape, "fp32"), sent, "fp32", 0.05, 1.0)[0]
    assert "dtype float16" in update_problem(encode_state(state, "fp16"), sent, "fp32", 0.05, 1.0)[0]

    far = {k: v + 1.0 for k, v in state.items()}
    problem, norm, _ = update_problem(encode_state(far, "fp32"), sent, "fp32", 0.05, 5.0)
    n = sum(v.numel() for v in state.values())
    assert norm == pytest.approx(np.sqrt(n)) and f"update norm {np.sqrt(n):.4g} exceeds" in problem


def test_an_update_of_1e30_is_rejected_in_float64(state):
    """Squared in float32, 1e30 overflows to inf; the norm is summed in float64 and bounded."""
    sent = {k: v.numpy() for k, v in state.items()}
    huge = {k: v.clone() for k, v in state.items()}
    huge["head.fc.bias"][0] = 1e30
    problem, norm, _ = update_problem(encode_state(huge, "fp32"), sent, "fp32", 0.05, 1e6)
    assert norm == pytest.approx(1e30, rel=1e-6) and "exceeds the bound" in problem


def test_an_oversized_or_lying_reply_is_rejected_before_it_is_decoded(state, monkeypatch):
    sent = {k: v.numpy() for k, v in state.items()}
    decoded = []
    monkeypatch.setattr(Array, "numpy", lambda self: decoded.append(1) or pytest.fail("a bad reply was decoded"))
    record = encode_state(state, "fp32")
    big = np.zeros(50_000_000, dtype=np.float32)  # 200 MB under a key of 10 values
    record["head.fc.bias"] = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=big.tobytes())
    problem, _, _ = update_problem(record, sent, "fp32", 0.05, 1.0)
    assert problem == "head.fc.bias: 200,000,000 bytes for 5 values of float32"
    assert decoded == []


# ---------------------------------------------------------------- the server sets the weights


@pytest.fixture
def rounds(tiny_cfg, tmp_path, state, monkeypatch):
    """A server's checks for 3 simulated partitions of 10, 20 and 30 videos (no held-out videos)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp has when it makes messages
        monkeypatch.setattr(TaskIdentity, name, 1)
    for partition, videos in enumerate((10, 20, 30)):
        (tmp_path / f"client_{partition:03d}.txt").write_text("".join(f"v{i}.mp4 0\n" for i in range(videos)))
    settings = FederatedSettings.from_run_config({
        **default_run_config(), "config": "tiny_clip", "min-nodes": 1, "partition-dir": str(tmp_path),
        "local-val-fraction": 0.0, "client-eval-every": 0, "batch-size": 2, "lr": 1e-3})
    cfg = experiment_config(settings)
    params = sum(v.numel() for v in state.values())  # every lr scale 1 in tiny_clip: the unit step's norm is sqrt(P)
    sizes = ClientSizes(settings, cfg, (params ** 0.5, cfg.schedule.weight_decay))
    return ValidatedRounds(build_strategy(settings), settings, sizes)


def train_replies(state, clients):
    """Instructions to nodes 1..n and their replies; `clients` holds (partition, num-examples, state) per node."""
    instructions, replies = [], []
    for node, (partition, examples, reply_state) in enumerate(clients, start=1):
        instruction = Message(RecordDict({"arrays": encode_state(state, "fp32")}), dst_node_id=node,
                              message_type="train")
        instruction.metadata._message_id = f"instruction-{node}"  # as the grid sets it when it sends the message
        instructions.append(instruction)
        replies.append(Message(RecordDict({"arrays": encode_state(reply_state, "fp32"), "metrics": MetricRecord({
            "train-loss": 1.0, "num-examples": examples, "skipped-videos": 0, "train-seconds": 1.0,
            "partition-id": partition})}), reply_to=instruction))
    return instructions, replies


def moved(state, by):
    return {k: v + by for k, v in state.items()}


def test_the_server_weights_updates_by_the_videos_it_knows_not_by_the_claims(rounds, state):
    honest = [(0, 10, moved(state, 1e-4)), (1, 20, moved(state, 2e-4)), (2, 30, moved(state, 4e-4))]
    outcome = rounds.aggregate_train(1, encode_state(state, "fp32"), *train_replies(state, honest))
    assert outcome.accepted == 3 and not outcome.rejected
    result = decode_state(outcome.arrays)
    expected = (10 * 1e-4 + 20 * 2e-4 + 30 * 4e-4) / 60  # weights 10, 20, 30: the partition lists
    for key in state:
        torch.testing.assert_close(result[key] - state[key], torch.full_like(state[key], expected), atol=1e-7,
                                   rtol=1e-4)


def test_the_aggregate_does_not_depend_on_the_order_the_replies_arrive_in(rounds, state):
    """Float sums depend on their order, so the server sums the updates in the order of the clients: a run must not
    depend on which client finished its round first."""
    generator = torch.Generator().manual_seed(0)
    clients = [(partition, videos, {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state.items()})
               for partition, videos in ((0, 10), (1, 20), (2, 30))]
    results = []
    for order in (slice(None), slice(None, None, -1)):
        instructions, replies = train_replies(state, clients)
        outcome = rounds.aggregate_train(1, encode_state(state, "fp32"), instructions, replies[order])
        assert outcome.accepted == 3
        results.append(decode_state(outcome.arrays))
    for key in state:
        assert torch.equal(results[0][key], results[1][key]), key


@pytest.mark.parametrize("claimed", [1e12, 1e308, 1_000_000])
def test_a_client_claiming_more_examples_than_it_has_is_rejected(rounds, state, claimed):
    clients = [(0, 10, moved(state, 1e-4)), (1, claimed, moved(state, 1e-3)), (2, claimed, state)]
    outcome = rounds.aggregate_train(1, encode_state(state, "fp32"), *train_replies(state, clients))
    assert outcome.accepted == 1
    assert all("but client" in r["reason"] and "training videos" in r["reason"] for r in outcome.rejected)
    result = decode_state(outcome.arrays)
    for key in state:  # the honest client's update, undiluted
        torch.testing.assert_close(result[key], state[key] + 1e-4, atol=1e-7, rtol=1e-5)


def test_a_free_rider_counts_by_its_own_size_only(rounds, state):
    """A client that sends the state unchanged with the right count is a client with 10 videos, no more."""
    clients = [(0, 10, state), (2, 30, moved(state, 4e-4))]
    outcome = rounds.aggregate_train(1, encode_state(state, "fp32"), *train_replies(state, clients))
    assert outcome.accepted == 2
    for key, value in decode_state(outcome.arrays).items():
        torch.testing.assert_close(value - state[key], torch.full_like(value, 4e-4 * 30 / 40), atol=1e-7, rtol=1e-4)


def test_a_partition_answers_once_and_an_unknown_one_not_at_all(rounds, state):
    clients = [(0, 10, moved(state, 1e-4)), (0, 10, moved(state, 1e-4)), (7, 10, moved(state, 1e-4))]
    outcome = rounds.aggregate_train(1, encode_state(state, "fp32"), *train_replies(state, clients))
    reasons = sorted(r["reason"] for r in outcome.rejected)
    assert outcome.accepted == 1 and "already answered this round (node 1)" in reasons[0]
    assert "partition-id 7 is not one of the 3 partitions" in reasons[1]


def test_the_update_bound_follows_the_clients_adamw_updates(rounds, state):
    """Partition 0: 10 videos at batch 2 = 5 updates at lr 1e-3, so an honest update stays below
    5 x 1e-3 x (3.2 sqrt(P) + 0.05 ||w||)."""
    params = sum(v.numel() for v in state.values())
    norm = float(np.sqrt(sum(float((v.double() ** 2).sum()) for v in state.values())))
    bound = 5 * 1e-3 * (3.2 * np.sqrt(params) + 0.05 * norm)
    assert rounds.sizes.max_update_norm(0, norm) == pytest.approx(bound)
    step = bound * 1.01 / np.sqrt(params)  # every parameter moved by the same amount: norm = 1.01 x bound
    outcome = rounds.aggregate_train(1, encode_state(state, "fp32"),
                                     *train_replies(state, [(0, 10, moved(state, step))]))
    assert outcome.accepted == 0 and "exceeds the bound" in outcome.rejected[0]["reason"]


def test_the_unit_step_counts_each_parameter_at_its_groups_lr(tiny_cfg):
    """A temporal embedding trained at 10x the lr may move 10x as far an update: the bound counts it 100x in the
    squared norm, so an honest client of a run with `schedule.temporal_lr_mult` is not rejected. It has no weight
    decay, so the decay term stays at the decayed groups' largest lr scale."""
    from aim_core.engine.step import adamw_step_scales
    from aimfl import build_model

    cfg = tiny_cfg("tiny_synthetic", "schedule.backbone_lr_mult=0.5")
    model = build_model(cfg)
    params = dict((n, p.numel()) for n, p in model.named_parameters() if p.requires_grad)
    head = sum(v for n, v in params.items() if n.startswith("head."))
    temporal = model.temporal_embedding.weight.numel()
    rest = sum(params.values()) - head - temporal
    wd = cfg.schedule.weight_decay
    cfg.schedule.temporal_lr_mult = 1
    assert adamw_step_scales(model, cfg.schedule) == pytest.approx(((head + 0.25 * (rest + temporal)) ** 0.5, wd))
    cfg.schedule.temporal_lr_mult = 10
    assert adamw_step_scales(model, cfg.schedule) == pytest.approx(((head + 0.25 * rest + 25 * temporal) ** 0.5, wd))


def test_a_superlink_reply_for_a_lost_node_does_not_count_as_that_node_replying():
    settings = FederatedSettings.from_run_config({**default_run_config(), "min-nodes": 2})
    rounds = ValidatedRounds(build_strategy(settings), settings, sizes=None)

    def message(message_id, src, dst, reply_to=""):
        return SimpleNamespace(metadata=SimpleNamespace(message_id=message_id, src_node_id=src, dst_node_id=dst,
                                                        reply_to_message_id=reply_to))

    instructions = [message("to-a", 1, 11), message("to-b", 1, 22)]
    from_a, superlink_for_b = message("r1", 11, 1, "to-a"), message("r2", 1, 1, "to-b")  # node 1 is the SuperLink
    replies = senders(instructions, [from_a, superlink_for_b])
    assert replies == [(11, from_a), (22, superlink_for_b)]
    with pytest.raises(RoundIncomplete, match="1 of the 2 sampled nodes replied.*node\\(s\\) 22 did not"):
        rounds.check_replied(1, [11, 22], replies)


@pytest.mark.parametrize("key, value, message", [
    ("num-server-rounds", -3, "num-server-rounds=-3 is out of range"),
    ("num-server-rounds", 2.5, "num-server-rounds=2.5 is not an int"),
    ("min-nodes", -1, "min-nodes=-1 is out of range"),
    ("min-nodes", 0, "min-nodes=0 is out of range"),
    ("fraction-train", 5.0, "fraction-train=5.0 is out of range"),
    ("fraction-train", 0.0, "fraction-train=0.0 is out of range"),
    ("fraction-evaluate", -0.5, "fraction-evaluate=-0.5 is out of range"),
    ("lr", float("nan"), "lr=nan is out of range"),
    ("lr", 0.0, "lr=0.0 is out of range"),
    ("lr", "abc", "lr='abc' is not a float"),
    ("update-norm-factor", -1.0, "update-norm-factor=-1.0 is out of range"),
    ("update-norm-factor", float("inf"), "update-norm-factor=inf is out of range"),
    ("local-epochs", 0, "local-epochs=0 is out of range"),
    ("batch-size", 0, "batch-size=0 is out of range"),
    ("strategy", "fedfoo", "strategy='fedfoo' is out of range: expected one of fedavg"),
    ("weighting", "num-examples", "weighting='num-examples' is out of range: expected one of videos, uniform"),
    ("beta-1", 1.5, "beta-1=1.5 is out of range"),
    ("beta-2", -0.1, "beta-2=-0.1 is out of range"),
    ("tau", 0.0, "tau=0.0 is out of range"),
    ("server-lr", -0.01, "server-lr=-0.01 is out of range"),
    ("proximal-mu", -1.0, "proximal-mu=-1.0 is out of range"),
    ("trimmed-beta", 0.6, "trimmed-beta=0.6 is out of range"),
    ("dp-noise-multiplier", -1.0, "dp-noise-multiplier=-1.0 is out of range"),
    ("dp-clipping-norm", 0.0, "dp-clipping-norm=0.0 is out of range"),
    ("dp-target-delta", 0.0, "dp-target-delta=0.0 is out of range"),
    ("round-timeout", 0, "round-timeout=0.0 is out of range"),
    ("local-val-fraction", 1.0, "local-val-fraction=1.0 is out of range"),
    ("update-codec", "bf16", "update-codec='bf16' is out of range"),
    ("downlink-codec", "topk", "downlink-codec='topk' is out of range"),
    ("topk-fraction", 0.0, "topk-fraction=0.0 is out of range"),
    ("warmup-rounds", 11, "warmup-rounds=11 exceeds num-server-rounds=10"),
    ("min-valid-replies", 3, "min-valid-replies=3 exceeds min-nodes=2"),
    ("central-eval-every", -1, "central-eval-every=-1 is out of range"),
    ("resume", "yes", "resume='yes' is not a bool"),
    ("seed", -5, "seed=-5 is out of range"),
    ("avgm-momentum", 1.0, "avgm-momentum=1.0 is out of range"),
    ("avgm-lr", 0.0, "avgm-lr=0.0 is out of range"),
])
def test_every_run_config_value_is_checked_and_named(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        FederatedSettings.from_run_config({**default_run_config(), key: value})


def test_a_deployed_site_takes_only_the_schedule_and_variant_from_the_run(tmp_path):
    """`config=/etc/passwd` is never read on a site; `data.num_workers=64` from the run is ignored."""
    secret = tmp_path / "secret.yaml"
    secret.write_text("model:\n  variant: spatial\n")
    run = {**default_run_config(), "config": "tiny_clip",
           "overrides": "data.num_workers=64 schedule.label_smoothing=0.1 model.variant=temporal "
                        f"data.root={tmp_path} model.backbone.checkpoint=/etc/passwd"}
    cfg = experiment_config(FederatedSettings.from_run_config(run), site=True)
    assert cfg.data.num_workers == load_config("tiny_clip").data.num_workers
    assert cfg.data.root == "" and cfg.model.backbone.checkpoint is None
    assert cfg.schedule.label_smoothing == 0.1 and cfg.model.variant == "temporal"
    with pytest.raises(ConfigError, match="only the name of a config"):
        experiment_config(FederatedSettings.from_run_config({**run, "config": str(secret)}), site=True)
    assert experiment_config(FederatedSettings.from_run_config({**run, "config": str(secret)})).model.variant == \
        "temporal"  # the operator's own machine (simulation, the server) reads a path


@pytest.mark.parametrize("override, message", [
    ("schedule.lr=1e-5", "overrides sets schedule.lr=1e-05, but the run config's lr sets it to 0.003"),
    ("seed=7", "overrides sets seed=7, but the run config's seed sets it to 0"),
    ("schedule.epochs=5", "schedule.epochs=5, but the run config's num-server-rounds x local-epochs sets it to 10"),
    ("output_dir=/elsewhere", "output_dir=/elsewhere, but the run config's out-dir sets it to"),
])
def test_overrides_cannot_contradict_the_run_config(override, message):
    run = {**default_run_config(), "num-server-rounds": 10, "lr": 3e-3, "seed": 0,
           "overrides": f"data.num_workers=0 {override}"}
    with pytest.raises(ConfigError, match=re.escape(message)):
        FederatedSettings.from_run_config(run)


def test_overrides_may_repeat_what_the_run_config_sets():
    run = {**default_run_config(), "lr": 3e-4, "seed": 7, "overrides": "schedule.lr=0.0003 seed=7"}
    cfg = experiment_config(FederatedSettings.from_run_config(run))
    assert cfg.schedule.lr == 3e-4 and cfg.seed == 7


def test_relative_paths_are_named_and_made_absolute_against_where_the_user_typed_them(tmp_path):
    from aim_core.federated.settings import relative_paths, with_absolute_paths

    run = {**default_run_config(), "config": "synthetic", "partition-dir": "parts", "out-dir": str(tmp_path / "o"),
           "overrides": "data.root=videos"}
    settings = FederatedSettings.from_run_config(run)
    named = relative_paths(settings, experiment_config(settings))
    assert "partition-dir=parts" in named and "data.root=videos" in named and "data.val_list=videos/val.txt" in named
    assert not any(item.startswith(("out-dir", "model.backbone.checkpoint")) for item in named)  # ~ is absolute
    fixed = FederatedSettings.from_run_config(with_absolute_paths(run, "/home/me"))
    cfg = experiment_config(fixed)
    assert relative_paths(fixed, cfg) == [] and fixed.partition_dir == "/home/me/parts"
    assert cfg.data.root == "/home/me/videos" and cfg.data.val_list == "/home/me/videos/val.txt"
    assert cfg.model.backbone.checkpoint.startswith(("~", "/")) and "/home/me" not in cfg.model.backbone.checkpoint
    deployed = FederatedSettings.from_run_config({**run, "overrides": "data.root=/videos",
                                                  "site-sizes": "/srv/sizes.json"})
    assert relative_paths(deployed, experiment_config(deployed)) == []  # a deployment reads no partition-dir


def test_fedavgm_steps_with_momentum_and_its_momentum_survives_a_resume(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from server.strategy import strategy_state

    for name in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp has when it makes messages
        monkeypatch.setattr(TaskIdentity, name, 1)

    settings = FederatedSettings.from_run_config({**default_run_config(), "strategy": "fedavgm", "avgm-lr": 2.0,
                                                  "avgm-momentum": 0.5})
    strategy = build_strategy(settings)
    start = {"w": np.zeros(3, np.float32)}
    strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    strategy.momentum_vector = [np.full(3, -1.0, np.float32)]  # the previous round's pseudo-gradient
    restored = build_strategy(settings, strategy_state(strategy))
    assert np.array_equal(restored.momentum_vector[0], strategy.momentum_vector[0])
    assert restored.server_learning_rate == 2.0 and restored.server_momentum == 0.5

    restored.current_arrays = strategy.current_arrays
    reply = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}),
                                "metrics": MetricRecord({"aggregation-weight": 1})}), dst_node_id=1,
                    message_type="train")
    aggregated, _ = restored.aggregate_train(1, [reply])
    # pseudo-gradient old - new = -1; momentum 0.5 * -1 + -1 = -1.5; step 0 - 2.0 * -1.5 = 3
    np.testing.assert_allclose(aggregated["w"].numpy(), np.full(3, 3.0))
