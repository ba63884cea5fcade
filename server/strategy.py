"""Flower's strategies, with every client reply checked before it is aggregated.

`build_strategy` makes the configured flwr strategy (FedAvg, FedProx, FedAdam, FedYogi, FedMedian,
FedTrimmedAvg, Krum, or server-side DP around FedAvg) and restores what it carried between rounds
when a run resumes (`strategy_state`: FedAdam/FedYogi moments, the DP accountant).

`ValidatedRounds` runs one round's training or evaluation with that strategy: the strategy samples
the nodes and aggregates; in between, every reply is checked. An error reply, extra records, a
reply from a client the server does not know or that already answered, a `num-examples` other than
the client's training videos as the server knows them (`server/client_sizes.py`), a different key
set, a wrong shape, dtype or size, non-finite values, or an update norm above the client's bound is
rejected, logged with the node id and the reason, and returned in the round's report. Each accepted
update counts by the weight the server sets from its own record of the client, never by what the
client claims. With fewer than `min-valid-replies` accepted updates the
round keeps the previous global state. When fewer than `min-nodes` of the sampled nodes replied
within `round-timeout` (a site crashed, lost its link or is too slow), `RoundIncomplete` ends the run
after its last finished round, which `resume=true` continues from.

The global state stays fp32 on the server (FedAdam's moments included); only the messages use the
codecs (`aim_core/federated/codec.py`): the clients' replies are decoded against the very state they were sent
(after the downlink codec) before the strategy sees them. The server, not the client, sets each update's weight.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from aim_core.config import ConfigError
from aim_core.federated.codec import decode_state, encode_state, payload_bytes, update_problem
from aim_core.federated.settings import FederatedSettings
from server.client_sizes import ClientSizes

# what a train reply reports (partition-id: the simulated partition it trained, -1 on a deployed site)
TRAIN_METRICS = ("train-loss", "num-examples", "skipped-videos", "train-seconds", "partition-id")
EVALUATE_METRICS = ("eval-top1", "eval-loss", "num-examples", "skipped-videos", "partition-id")
WEIGHT_KEY = "aggregation-weight"  # set by the server: clients do not pick their weight
MOMENTS = ("m_t", "v_t")  # FedAdam / FedYogi
MOMENTUM = "momentum_vector"  # FedAvgM


class RoundIncomplete(RuntimeError):
    """Fewer than `min-nodes` nodes replied to a round's training instructions within `round-timeout`."""


def short_reason(reason: str) -> str:
    """The last line of an error reply's reason (the simulation engine sends whole tracebacks)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else reason)[-300:]


def build_strategy(settings: FederatedSettings, state: dict | None = None) -> Strategy:
    """The configured flwr strategy, carrying `state` (from `strategy_state`) when a run resumes."""
    population = settings.min_nodes
    common = {"fraction_train": settings.fraction_train, "fraction_evaluate": settings.fraction_evaluate,
              "min_train_nodes": settings.min_nodes, "min_evaluate_nodes": settings.min_nodes,
              "min_available_nodes": settings.min_nodes, "weighted_by_key": WEIGHT_KEY}
    adaptive = {"eta": settings.server_lr, "beta_1": settings.beta_1, "beta_2": settings.beta_2, "tau": settings.tau}
    choices = {
        "fedavg": (FedAvg, {}),
        "fedavgm": (FedAvgM, {"server_learning_rate": settings.avgm_lr, "server_momentum": settings.avgm_momentum}),
        "fedprox": (FedProx, {"proximal_mu": settings.proximal_mu}),
        "fedadam": (FedAdam, adaptive),
        "fedyogi": (FedYogi, adaptive),
        "fedmedian": (FedMedian, {}),
        "fedtrimmedavg": (FedTrimmedAvg, {"beta": settings.trimmed_beta}),
        "krum": (Krum, {"num_malicious_nodes": settings.krum_malicious_nodes}),
    }
    if settings.strategy not in choices:
        raise ConfigError(f"run config strategy={settings.strategy!r}; choose one of {', '.join(choices)}")
    base, extra = choices[settings.strategy]
    if settings.dp_noise_multiplier <= 0:
        strategy = base(**common, **extra)
    else:
        if settings.strategy != "fedavg":
            raise ConfigError("server-side DP with an accountant wraps plain FedAvg only (strategy=\"fedavg\")")
        sampled = max(int(population * settings.fraction_train), settings.min_nodes)
        accountant = RdpAccountant(PrivacyConfig(
            target_delta=settings.dp_target_delta, population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        strategy = DifferentialPrivacyServerSideFixedClipping(
            FedAvg(**common), settings.dp_noise_multiplier, settings.dp_clipping_norm, sampled, accountant=accountant)
    for name, value in (state or {}).items():
        if name == "accountant":
            strategy.accountant.load_state_dict(value)
        elif name == MOMENTUM:  # a list, in the arrays' order
            strategy.momentum_vector = [value[str(i)].numpy() for i in range(len(value))]
        else:  # moments are stored as tensors: checkpoints load with weights_only=True
            setattr(strategy, name, {k: v.numpy() for k, v in value.items()})
    return strategy


def strategy_state(strategy: Strategy) -> dict:
    """What a strategy carries from round to round: FedAdam/FedYogi moments, FedAvgM's momentum, the DP
    accountant's releases."""
    state = {name: {k: torch.from_numpy(np.asarray(v)) for k, v in getattr(strategy, name).items()}
             for name in MOMENTS if getattr(strategy, name, None) is not None}
    if getattr(strategy, MOMENTUM, None) is not None:
        state[MOMENTUM] = {str(i): torch.from_numpy(np.asarray(v)) for i, v in enumerate(strategy.momentum_vector)}
    if getattr(strategy, "accountant", None) is not None:
        state["accountant"] = strategy.accountant.state_dict()
    return state


@dataclass
class TrainRound:
    """What happened in one round's training phase."""

    arrays: ArrayRecord | None  # the new global state (fp32), or None: the previous one is kept
    sampled: list[int]
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"node", "reason"}
    nodes: dict[str, dict] = field(default_factory=dict)  # node id -> bytes sent and received, reported metrics
    seconds: float = 0.0  # instructions out to aggregate in


@dataclass
class EvaluateRound:
    """What happened in one round's client-side evaluation."""

    metrics: dict | None  # video-weighted means over the clients that evaluated, or None: none did
    bytes_sent: dict[str, int] = field(default_factory=dict)  # node id -> bytes of the state sent to it


class ValidatedRounds:
    """One round's training or evaluation through `strategy`, every reply checked first (see the module doc);
    `sizes` is what the server knows of each client: its weight, its training videos, its update bound."""

    def __init__(self, strategy: Strategy, settings: FederatedSettings, sizes: ClientSizes):
        self.strategy = strategy
        self.settings = settings
        self.sizes = sizes

    def train(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> TrainRound:
        """Sends the global state `arrays` to the sampled nodes, waits for their updates, and aggregates the valid
        ones."""
        started = time.time()
        wire = encode_state(decode_state(arrays), self.settings.downlink_codec)
        instructions = list(self.strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        for message in instructions:
            message.content["arrays"] = wire
        replies = grid.send_and_receive(instructions, timeout=self.settings.round_timeout)
        outcome = self.aggregate_train(server_round, wire, instructions, replies)
        outcome.seconds = time.time() - started
        return outcome

    def aggregate_train(self, server_round: int, wire: ArrayRecord, instructions: list[Message],
                        replies) -> TrainRound:
        """Checks every reply to `instructions` against the global state they carried (`wire`, in the downlink
        codec: what the clients started from), and aggregates the valid ones with the strategy."""
        sent = {k: v.numpy() for k, v in decode_state(wire).items()}
        global_norm = math.sqrt(sum(float(np.dot(v.ravel(), v.ravel())) for v in sent.values()))
        outcome = TrainRound(arrays=None, sampled=sorted(m.metadata.dst_node_id for m in instructions))
        for message in instructions:
            outcome.nodes[str(message.metadata.dst_node_id)] = {
                "bytes_sent": payload_bytes(message.content["arrays"]), "bytes_received": 0}
        replies = senders(instructions, replies)
        self.check_replied(server_round, outcome.sampled, replies)
        accepted, answered = [], {}
        for node, reply in replies:
            record = outcome.nodes.setdefault(str(node), {"bytes_sent": 0, "bytes_received": 0})
            if not reply.has_error():
                record["bytes_received"] += sum(payload_bytes(r) for r in reply.content.array_records.values())
            problem, key, state = self.train_reply_problem(reply, node, sent, global_norm, answered, record)
            if problem:
                log(WARNING, "round %d: rejected the update of node %d: %s", server_round, node, problem)
                outcome.rejected.append({"node": node, "reason": problem})
                continue
            answered[key] = node
            metrics = reply.content["metrics"]
            # the decoded fp32 state for aggregation, and only the metrics of the contract, plus the weight the
            # server sets
            reply.content["arrays"] = ArrayRecord({k: torch.from_numpy(v) for k, v in state.items()})
            reply.content["metrics"] = MetricRecord({**{k: metrics[k] for k in TRAIN_METRICS},
                                                     WEIGHT_KEY: self.sizes.weight(key)})
            record.update({k: metrics[k] for k in TRAIN_METRICS})
            accepted.append((key, reply))
        outcome.accepted = len(accepted)
        if len(accepted) < self.settings.min_valid_replies:
            log(WARNING, "round %d: %d valid updates (fewer than min-valid-replies=%d); keeping the previous global "
                         "state", server_round, len(accepted), self.settings.min_valid_replies)
            return outcome
        # in the order of the clients, not of their replies: float sums depend on their order, and a run must not
        # depend on which client finished first
        aggregated, _ = self.strategy.aggregate_train(server_round, [reply for _, reply in sorted(
            accepted, key=lambda pair: pair[0])])
        if aggregated is not None:  # None: the strategy declined (e.g. DP accounting saw a rejected reply)
            outcome.arrays = encode_state(decode_state(aggregated), "fp32")
        return outcome

    def check_replied(self, server_round: int, sampled: list[int], replies: list[tuple[int, Message]]) -> None:
        """Raises `RoundIncomplete` when fewer than `min-nodes` sampled nodes replied (their errors count; the
        SuperLink's replies for nodes it lost do not)."""
        replied = {node for node, reply in replies if reply.metadata.src_node_id == node}
        silent = ", ".join(str(node) for node in sampled if node not in replied)
        why = f"node(s) {silent} did not (unreachable, or silent for round-timeout={self.settings.round_timeout:g} s)"
        if len(replied) < self.settings.min_nodes:
            raise RoundIncomplete(f"round {server_round}: {len(replied)} of the {len(sampled)} sampled nodes replied, "
                                  f"fewer than min-nodes={self.settings.min_nodes}; {why}")
        if silent:
            log(WARNING, "round %d: %d of the %d sampled nodes replied; %s", server_round, len(replied), len(sampled),
                why)

    def train_reply_problem(self, reply: Message, node: int, sent: dict[str, np.ndarray], global_norm: float,
                            answered: dict[int, int], record: dict) -> tuple[str | None, int | None, dict | None]:
        """(why the reply cannot be aggregated, or None; the key of the client the server knows it by; its decoded
        state). Its update norm and bound go into `record`, the node's line of the round."""
        if reply.has_error():
            return f"error reply: {short_reason(reply.error.reason)}", None, None
        content = reply.content
        if set(content.keys()) != {"arrays", "metrics"} or "arrays" not in content.array_records \
                or "metrics" not in content.metric_records:
            return (f"records {sorted(content.keys())}, expected exactly an ArrayRecord 'arrays' and a MetricRecord "
                    "'metrics'"), None, None
        metrics = content["metrics"]
        missing = [k for k in TRAIN_METRICS if not isinstance(metrics.get(k), (int, float))]
        if missing:
            return f"metrics lack {missing}", None, None
        if not all(math.isfinite(metrics[k]) for k in TRAIN_METRICS):
            return "non-finite metrics", None, None
        key, problem = self.sizes.identify(node, metrics)
        if problem:
            return problem, None, None
        if key in answered:
            return f"client {key} already answered this round (node {answered[key]})", None, None
        if metrics["num-examples"] != self.sizes.train_videos(key):
            return (f"num-examples={metrics['num-examples']!r}, but client {key} has "
                    f"{self.sizes.train_videos(key)} training videos"), None, None
        bound = self.sizes.max_update_norm(key, global_norm)
        settings = self.settings
        problem, norm, state = update_problem(content["arrays"], sent, settings.update_codec, settings.topk_fraction,
                                              bound)
        record.update({"update-norm": norm, "norm-bound": bound})
        if problem is None and settings.dp_noise_multiplier > 0 and norm == 0:
            return "an unchanged state: flwr's DP clipping divides by the update's norm, which is zero", None, None
        return problem, key, state

    def evaluate(self, grid: Grid, server_round: int, arrays: ArrayRecord) -> EvaluateRound:
        """Client-side evaluation on held-out local videos, every `client-eval-every` rounds."""
        every = self.settings.client_eval_every
        if not every or server_round % every:
            return EvaluateRound(metrics=None)
        messages = list(self.strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        wire = encode_state(decode_state(arrays), self.settings.downlink_codec)
        for message in messages:
            message.content["arrays"] = wire
        outcome = EvaluateRound(None, {str(m.metadata.dst_node_id): payload_bytes(wire) for m in messages})
        accepted, answered = [], set()
        for node, reply in senders(messages, grid.send_and_receive(messages, timeout=self.settings.round_timeout)):
            problem, key = self.evaluate_reply_problem(reply, node, answered)
            if problem:
                log(WARNING, "round %d: rejected the evaluation of node %d: %s", server_round, node, problem)
                continue
            answered.add(key)
            metrics = reply.content["metrics"]
            # weighted by the videos the client evaluated, which cannot exceed those the server knows it held out
            reply.content["metrics"] = MetricRecord({**{k: metrics[k] for k in EVALUATE_METRICS},
                                                     WEIGHT_KEY: metrics["num-examples"]})
            accepted.append(reply)
        if accepted:
            aggregated = self.strategy.aggregate_evaluate(server_round, accepted)
            outcome.metrics = {"eval-top1": aggregated["eval-top1"], "eval-loss": aggregated["eval-loss"],
                               "videos": sum(reply.content["metrics"]["num-examples"] for reply in accepted),
                               "clients": len(accepted)}
        return outcome


    def evaluate_reply_problem(self, reply: Message, node: int, answered: set) -> tuple[str | None, int | None]:
        if reply.has_error():
            return f"error reply: {short_reason(reply.error.reason)}", None
        metrics = reply.content.metric_records.get("metrics")
        if metrics is None:
            return "no MetricRecord 'metrics'", None
        if any(not isinstance(metrics.get(k), (int, float)) or not math.isfinite(metrics[k])
               for k in EVALUATE_METRICS):
            return f"metrics lack finite {EVALUATE_METRICS}", None
        key, problem = self.sizes.identify(node, metrics)
        if problem or key in answered:
            return problem or f"client {key} already answered this round", None
        held_out = self.sizes.videos_of(key) - self.sizes.train_videos(key)
        if not 0 < metrics["num-examples"] <= held_out:
            return f"num-examples={metrics['num-examples']!r}, but client {key} holds out {held_out} videos", None
        return None, key


def senders(instructions: list[Message], replies) -> list[tuple[int, Message]]:
    """Each reply with the node it answers for. The SuperLink answers for a node it lost, as node 1, so a reply
    whose source is not that node did not come from it. (The grid gives each instruction its id as it sends it.)"""
    destination = {m.metadata.message_id: m.metadata.dst_node_id for m in instructions}
    return [(destination.get(r.metadata.reply_to_message_id, r.metadata.src_node_id), r) for r in replies]
