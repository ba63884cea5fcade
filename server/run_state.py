"""The server's state of one federated run: the global model, the history of rounds, checkpoints and reports.

In `out-dir`:

    metrics.jsonl              one line per round: accuracy, loss, bytes per client, rejections,
                               skipped videos, wall time (and TensorBoard scalars in tensorboard/)
    checkpoints/last.pt        written atomically after every round: global trainable state, round,
                               the strategy's own state (FedAdam/FedYogi moments, the DP accountant),
                               history; read back with weights_only=True by `resume=true`
    best.safetensors           the best central top-1 so far
    final.safetensors          the trainable state after the last round (`aimfl eval`/`predict`)
    final.json, plots/*.png    summary; accuracy and loss per round, cumulative bytes, label
                               distribution per client (simulation: from the partition summary)
"""

from __future__ import annotations

import json
import os
import time
from logging import INFO, WARNING

from flwr.app import ArrayRecord
from flwr.common.logger import log

from aim_core.config import to_dict
from aim_core.data.annotations import class_names_of, read_annotations
from aim_core.engine.checkpoint import CheckpointError, load_training_state, save_trainable, save_training_state
from aim_core.engine.evaluation import evaluate_records
from aim_core.engine.metrics_log import MetricsLog
from aim_core.engine.precision import default_device
from aim_core.engine.run_dir import open_run_dir
from aim_core.federated.codec import decode_state, encode_state, encode_update, payload_bytes
from aim_core.federated.settings import FederatedSettings, experiment_config
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters, load_trainable_state, trainable_state
from server.plots import plot_rounds
from server.strategy import EvaluateRound, TrainRound


class FederatedRun:
    """The global model (for central evaluation and the files), the rounds done so far, and where they are kept.

    A fresh run starts from the same initial adapters and head as `aimfl train` with the same seed; with
    `resume=true` it starts from `checkpoints/last.pt` and `strategy_state` holds what the strategy carried.
    Construction builds the model and reads the val list; `open()` takes the run folder.
    """

    def __init__(self, settings: FederatedSettings):
        self.settings = settings
        self.cfg = experiment_config(settings)
        self.out = os.path.abspath(settings.out_dir)
        self.ckpt_path = os.path.join(self.out, "checkpoints", "last.pt")
        self.device = default_device()
        self.model = build_model(self.cfg.model, seed=self.cfg.seed).to(self.device)
        self.counts = count_parameters(self.model)
        data = self.cfg.data
        self.val_records = read_annotations(data.val_list, data.list_format, data.class_names,
                                            data.num_classes) if data.val_list else []
        if settings.central_eval_every and not data.val_list:
            log(WARNING, "the config sets no data.val_list: no central evaluation in this run (every round is still "
                         "checkpointed; set central-eval-every=0 to silence this)")
        self.history: list[dict] = []
        self.best_top1 = -1.0
        self.strategy_state: dict = {}

    def open(self) -> None:
        """Takes the run folder (refused if it holds another run, unless resuming or overwriting) and restores the
        last checkpoint when resuming; nothing is written before this, so a run refused earlier leaves no trace."""
        settings = self.settings
        self.run_dir = open_run_dir(self.out, resume=settings.resume, overwrite=settings.overwrite, key="out-dir")
        if settings.resume and os.path.isfile(self.ckpt_path):
            self._restore()
        elif settings.resume:
            log(INFO, "resume=true but %s does not exist: starting at round 1", self.ckpt_path)
        os.makedirs(os.path.dirname(self.ckpt_path), exist_ok=True)
        self.metrics = MetricsLog(self.out, "round", resume_after=self.rounds_done)
        self.started = time.time()

    def _restore(self) -> None:
        state = load_training_state(self.ckpt_path)
        if state["strategy"] != self.settings.strategy:
            raise CheckpointError(f"{self.ckpt_path} was written by strategy {state['strategy']!r}, not "
                                  f"{self.settings.strategy!r}; resume with the same strategy")
        self.history, self.best_top1 = state["history"], state["best_top1"]
        self.strategy_state = state["strategy_state"]
        load_trainable_state(self.model, {k: v.to(self.device) for k, v in state["arrays"].items()},
                             source=self.ckpt_path)
        log(INFO, "resuming after round %d from %s", self.rounds_done, self.ckpt_path)

    @property
    def rounds_done(self) -> int:
        return self.history[-1]["round"] if self.history else 0

    def global_arrays(self) -> ArrayRecord:
        return encode_state(trainable_state(self.model), "fp32")

    def central_evaluation(self, server_round: int) -> dict | None:
        """Multi-view evaluation (as `aimfl eval`) of the global model on the config's val list, every
        `central-eval-every` rounds and after the last."""
        every = self.settings.central_eval_every
        due = every and (server_round % every == 0 or server_round == self.settings.num_server_rounds)
        if not (due and self.val_records):
            return None
        result = evaluate_records(self.model, self.cfg, self.val_records, self.cfg.data.val_root, self.device)
        keys = ("top1", "top5", "loss", "skipped", "order_top1")
        return {k: result[k] for k in keys if k in result}

    def end_round(self, server_round: int, arrays: ArrayRecord, trained: TrainRound, evaluated: EvaluateRound,
                  strategy_state: dict, privacy=None) -> dict:
        """Takes the round's global state, evaluates it centrally when due, and records and checkpoints the round."""
        load_trainable_state(self.model, {k: v.to(self.device) for k, v in decode_state(arrays).items()},
                             source=f"the global state of round {server_round}")
        nodes = trained.nodes
        for node, sent in evaluated.bytes_sent.items():
            nodes.setdefault(node, {"bytes_sent": 0, "bytes_received": 0})["bytes_sent"] += sent
        record = {
            "accepted_updates": trained.accepted,
            "rejected_updates": len(trained.rejected),
            "rejections": trained.rejected,
            "kept_previous_state": trained.arrays is None,
            "train_loss": _weighted(nodes, "train-loss"),
            "train_videos": sum(n.get("num-examples", 0) for n in nodes.values()),
            "skipped_videos": sum(n.get("skipped-videos", 0) for n in nodes.values()),
            "slowest_client_seconds": max((n.get("train-seconds", 0.0) for n in nodes.values()), default=0.0),
            "train_phase_seconds": trained.seconds,
            "bytes_sent": sum(n["bytes_sent"] for n in nodes.values()),
            "bytes_received": sum(n["bytes_received"] for n in nodes.values()),
            "full_model_bytes_per_client": self.full_model_bytes(),
            "clients": nodes,
            "client_eval": evaluated.metrics,
        }
        central = self.central_evaluation(server_round)
        if central:
            record["central"] = central
            if central["top1"] > self.best_top1:
                self.best_top1 = central["top1"]
                self.save(os.path.join(self.out, "best.safetensors"), server_round)
        previous = self.history[-1]["wall_seconds_total"] if self.history else 0.0
        record["wall_seconds_total"] = previous + time.time() - self.started
        self.started = time.time()
        if privacy is not None:
            record["privacy"] = {"epsilon": privacy.epsilon, "delta": privacy.delta}
        self.history.append({"round": server_round, **record})
        self.metrics.log(server_round, **record)
        arrays = {k: v.cpu().clone() for k, v in trainable_state(self.model).items()}
        save_training_state({"round": server_round, "arrays": arrays, "strategy": self.settings.strategy,
                             "strategy_state": strategy_state, "history": self.history, "best_top1": self.best_top1},
                            self.ckpt_path)
        log(INFO, "round %d: %d accepted, %d rejected, train loss %s, %.1f MB sent, %.1f MB received%s",
            server_round, record["accepted_updates"], record["rejected_updates"],
            "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}",
            record["bytes_sent"] / 1e6, record["bytes_received"] / 1e6,
            f", central top-1 {central['top1']:.1%}" if central else "")
        return record

    def update_bytes(self) -> int:
        """The bytes of one client's reply on the wire, in the update codec (the same for every reply)."""
        state = trainable_state(self.model)
        settings = self.settings
        return payload_bytes(encode_update(state, state, settings.update_codec, settings.topk_fraction, None)[0])

    def downlink_bytes(self) -> int:
        """The bytes of the global state sent to one client, in the downlink codec."""
        return payload_bytes(encode_state(trainable_state(self.model), self.settings.downlink_codec))

    def full_model_bytes(self) -> int:
        """What sending the whole model (frozen backbone included) in fp32 would cost."""
        return self.counts["total_params"] * 4

    def save(self, path: str, server_round: int) -> None:
        save_trainable(self.model, path, to_dict(self.cfg),
                       {"class_names": json.dumps(class_names_of(self.cfg.data)), "round": str(server_round),
                        "federated_strategy": self.settings.strategy})

    def finish(self, privacy=None) -> dict:
        last = self.history[-1] if self.history else {}
        summary = {
            "rounds_done": self.rounds_done, "num_server_rounds": self.settings.num_server_rounds,
            "strategy": self.settings.strategy, **self.counts,
            "bytes_per_update": self.update_bytes(),
            "downlink_bytes": self.downlink_bytes(), "full_model_bytes": self.full_model_bytes(),
            "update_codec": self.settings.update_codec, "downlink_codec": self.settings.downlink_codec,
            "bytes_total": sum(r["bytes_sent"] + r["bytes_received"] for r in self.history),
            "central": next((r["central"] for r in reversed(self.history) if "central" in r), None),
            "best_central_top1": self.best_top1 if self.best_top1 >= 0 else None,
            "rejected_updates": sum(r["rejected_updates"] for r in self.history),
            "skipped_videos": sum(r["skipped_videos"] for r in self.history),
            "wall_seconds": last.get("wall_seconds_total"),
        }
        if privacy is not None:
            summary["privacy"] = {"epsilon": privacy.epsilon, "delta": privacy.delta}
        self.save(os.path.join(self.out, "final.safetensors"), summary["rounds_done"])
        with open(os.path.join(self.out, "final.json"), "w") as f:
            json.dump(summary, f, indent=2)
        summary_path = os.path.join(self.settings.partition_dir, "summary.json")
        plot_rounds(self.history, os.path.join(self.out, "plots"),
                    summary_path if os.path.isfile(summary_path) else None, class_names_of(self.cfg.data))
        return summary


def _weighted(nodes: dict, key: str) -> float | None:
    pairs = [(n[key], n["num-examples"]) for n in nodes.values() if key in n]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None
