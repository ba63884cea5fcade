"""Flower strategies with aimfl's reply validation, selectable by name.

`validated(cls)` puts `ValidatedAggregation` in front of any flwr strategy class (FedAvg, FedProx,
FedAdam, FedYogi, FedMedian, FedTrimmedAvg, Krum, or a DP wrapper around FedAvg). Before the
strategy aggregates, every reply is checked: an error reply, extra records, a different key set,
a wrong shape or dtype, non-finite values, an update norm above `max-update-norm` or a
non-positive `num-examples` is rejected, logged with the node id and the reason, and counted. A
round with fewer than `min-valid-replies` accepted updates keeps the previous global state. A
round in which fewer than `min-nodes` of the sampled nodes replied within `round-timeout` (a
site crashed, lost its link or is too slow) raises `RoundIncomplete`: the run stops after its
last finished round, which `resume=true` continues from.

The global state stays fp32 on the server (FedAdam's moments included); only the messages use
the wire dtype. `round_offset` continues round numbers after a resume, so configs sent to clients,
FedAdam's bias correction and the logs all see the true round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from logging import WARNING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from aim_core.config import ConfigError
from aim_core.federated import FederatedSettings, decode_state, encode_state, payload_bytes, update_problem

TRAIN_METRICS = ("train-loss", "num-examples", "skipped-videos", "train-seconds")  # what a train reply reports
EVALUATE_METRICS = ("eval-top1", "eval-loss", "num-examples", "skipped-videos")
WEIGHT_KEY = "aggregation-weight"  # set by the server from num-examples (or 1): clients do not pick their weight


class RoundIncomplete(RuntimeError):
    """Fewer than `min-nodes` nodes replied to a round's training instructions within `round-timeout`."""


def short_reason(reason: str) -> str:
    """The last line of an error reply's reason (the simulation engine sends whole tracebacks)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else reason)[-300:]


def build_strategy(settings: FederatedSettings, population: int) -> Strategy:
    """The configured strategy, validated; `population` is the number of clients (for DP accounting)."""
    common = {"fraction_train": settings.fraction_train, "fraction_evaluate": settings.fraction_evaluate,
              "min_train_nodes": settings.min_nodes, "min_evaluate_nodes": settings.min_nodes,
              "min_available_nodes": settings.min_nodes, "weighted_by_key": WEIGHT_KEY}
    adaptive = {"eta": settings.server_lr, "beta_1": settings.beta_1, "beta_2": settings.beta_2, "tau": settings.tau}
    choices = {
        "fedavg": (FedAvg, {}),
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
        strategy = validated(base)(**common, **extra)
    else:
        if settings.strategy != "fedavg":
            raise ConfigError("server-side DP with an accountant wraps plain FedAvg only (strategy=\"fedavg\")")
        sampled = max(int(population * settings.fraction_train), settings.min_nodes)
        accountant = RdpAccountant(PrivacyConfig(
            target_delta=settings.dp_target_delta, population_size=population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        strategy = validated(DifferentialPrivacyServerSideFixedClipping)(
            FedAvg(**common), settings.dp_noise_multiplier, settings.dp_clipping_norm, sampled, accountant=accountant)
    strategy.setup_validation(settings)
    return strategy


def validated(strategy_class: type) -> type:
    """`strategy_class` with `ValidatedAggregation` in front of it."""
    return type(f"Validated{strategy_class.__name__}", (ValidatedAggregation, strategy_class), {})


class ValidatedAggregation:
    """Put in front of a flwr strategy class by `validated`; see the module docstring."""

    def setup_validation(self, settings: FederatedSettings) -> None:
        self.settings = settings
        self.round_offset = 0
        self.round_log: dict = {}  # what happened in the current round, read by the server app
        self.instructions: list[Message] = []  # the messages of the current phase (train or evaluate)

    # --- training -------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        self.expect(server_round, arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        wire = encode_state(self.sent, self.settings.update_dtype)
        for message in messages:
            message.content["arrays"] = wire
            self._node(message.metadata.dst_node_id)["bytes_sent"] += payload_bytes(wire)
        self.round_log["sampled"] = sorted(message.metadata.dst_node_id for message in messages)
        self.instructions = messages  # the grid gives each its message id when it sends it
        return messages

    def expect(self, server_round: int, arrays: ArrayRecord) -> None:
        """Starts a round's log; replies will be checked against `arrays`, the global state sent."""
        self.sent = decode_state(arrays)
        self.expected = {k: tuple(v.shape) for k, v in self.sent.items()}
        self.round_log = {"round": server_round, "nodes": {}, "rejected": [], "started": time.time()}

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = self.senders(replies)
        self.check_replied(server_round, {node for node, reply in replies if reply.metadata.src_node_id == node})
        accepted = []
        for node, reply in replies:
            problem = self._train_reply_problem(reply, node)
            if problem:
                log(WARNING, "round %d: rejected the update of node %d: %s", server_round, node, problem)
                self.round_log["rejected"].append({"node": node, "reason": problem})
                continue
            metrics = reply.content["metrics"]
            weight = metrics["num-examples"] if self.settings.weighting == "num-examples" else 1
            # fp32 for aggregation, and only the metrics of the contract, plus the server-chosen weight
            if self.settings.update_dtype != "fp32":
                reply.content["arrays"] = encode_state(decode_state(reply.content["arrays"]), "fp32")
            reply.content["metrics"] = MetricRecord({**{k: metrics[k] for k in TRAIN_METRICS}, WEIGHT_KEY: weight})
            self._node(node).update({k: metrics[k] for k in TRAIN_METRICS})
            accepted.append(reply)
        self.round_log["accepted"] = len(accepted)
        if len(accepted) < self.settings.min_valid_replies:
            log(WARNING, "round %d: %d valid updates (fewer than min-valid-replies=%d); keeping the previous global "
                        "state", server_round, len(accepted), self.settings.min_valid_replies)
            self.round_log["kept_previous_state"] = True
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if arrays is None:  # the strategy declined (e.g. DP accounting saw a rejected reply)
            self.round_log["kept_previous_state"] = True
            return None, metrics
        self.round_log["kept_previous_state"] = False
        self.round_log["train_phase_seconds"] = time.time() - self.round_log["started"]
        return encode_state(decode_state(arrays), "fp32"), metrics

    def senders(self, replies: Iterable[Message]) -> list[tuple[int, Message]]:
        """Each reply with the node it answers for. The SuperLink answers for a node it lost, as node 1, so a reply
        whose source is not that node did not come from it."""
        destination = {m.metadata.message_id: m.metadata.dst_node_id for m in self.instructions}
        return [(destination.get(r.metadata.reply_to_message_id, r.metadata.src_node_id), r) for r in replies]

    def check_replied(self, server_round: int, replied: set[int]) -> None:
        """Raises `RoundIncomplete` when fewer than `min-nodes` sampled nodes replied (their errors count)."""
        sampled = self.round_log.get("sampled", [])
        silent = ", ".join(str(node) for node in sampled if node not in replied)
        why = f"node(s) {silent} did not (unreachable, or silent for round-timeout={self.settings.round_timeout:g} s)"
        if len(replied) < self.settings.min_nodes:
            raise RoundIncomplete(f"round {server_round}: {len(replied)} of the {len(sampled)} sampled nodes replied, "
                                  f"fewer than min-nodes={self.settings.min_nodes}; {why}")
        if silent:
            log(WARNING, "round %d: %d of the %d sampled nodes replied; %s", server_round, len(replied), len(sampled),
                why)

    def _train_reply_problem(self, reply: Message, node: int) -> str | None:
        if reply.has_error():
            return f"error reply: {short_reason(reply.error.reason)}"
        self._node(node)["bytes_received"] += sum(
            payload_bytes(r) for r in reply.content.array_records.values())
        if set(reply.content.keys()) != {"arrays", "metrics"} or "arrays" not in reply.content.array_records \
                or "metrics" not in reply.content.metric_records:
            return f"records {sorted(reply.content.keys())}, expected exactly an ArrayRecord 'arrays' and a MetricRecord 'metrics'"
        metrics = reply.content["metrics"]
        missing = [k for k in TRAIN_METRICS if not isinstance(metrics.get(k), (int, float))]
        if missing:
            return f"metrics lack {missing}"
        if not all(math.isfinite(metrics[k]) for k in TRAIN_METRICS):
            return "non-finite metrics"
        bound = self.settings.max_update_norm or None
        problem = update_problem(reply.content["arrays"], self.expected, self.settings.update_dtype,
                                 metrics["num-examples"], self.sent, bound)
        if problem is None and self.settings.dp_noise_multiplier > 0 and all(
                (decode_state(reply.content["arrays"])[k] == v).all() for k, v in self.sent.items()):
            return "an unchanged state: flwr's DP clipping divides by the update's norm, which is zero"
        return problem

    # --- evaluation -----------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        every = self.settings.client_eval_every
        if not every or server_round % every:
            return []
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        wire = encode_state(decode_state(arrays), self.settings.update_dtype)
        for message in messages:
            message.content["arrays"] = wire
            self._node(message.metadata.dst_node_id)["bytes_sent"] += payload_bytes(wire)
        self.instructions = messages
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        accepted = []
        for node, reply in self.senders(replies):
            metrics = None if reply.has_error() else reply.content.metric_records.get("metrics")
            problem = (f"error reply: {short_reason(reply.error.reason)}" if reply.has_error() else
                       "no MetricRecord 'metrics'" if metrics is None else
                       f"metrics lack {EVALUATE_METRICS}" if any(not isinstance(metrics.get(k), (int, float))
                                                                 for k in EVALUATE_METRICS) else
                       f"num-examples={metrics['num-examples']}" if not metrics["num-examples"] > 0 else None)
            if problem:
                log(WARNING, "round %d: rejected the evaluation of node %d: %s", server_round, node, problem)
                continue
            # client-side metrics are weighted by the videos each client evaluated
            reply.content["metrics"] = MetricRecord({**{k: metrics[k] for k in EVALUATE_METRICS},
                                                     WEIGHT_KEY: metrics["num-examples"]})
            accepted.append(reply)
        if not accepted:
            return None
        aggregated = super().aggregate_evaluate(server_round, accepted)
        videos = sum(reply.content["metrics"]["num-examples"] for reply in accepted)
        self.round_log["client_eval"] = {"eval-top1": aggregated["eval-top1"], "eval-loss": aggregated["eval-loss"],
                                         "videos": videos, "clients": len(accepted)}
        return aggregated

    def _node(self, node_id: int) -> dict:
        return self.round_log["nodes"].setdefault(str(node_id), {"bytes_sent": 0, "bytes_received": 0})
