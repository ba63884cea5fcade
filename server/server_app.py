"""The Flower ServerApp: federated AIM rounds with checkpoints, evaluation, metrics and plots.

Every round (`flwr.serverapp.strategy` runs it, validated as in `server/strategy.py`):
clients train and reply with their trainable state; valid updates are aggregated; clients
evaluate on held-out local videos every `client-eval-every` rounds; the server evaluates on the
config's val list every `central-eval-every` rounds (multi-view, as `aimfl eval`). Then, in
`out-dir`:

    metrics.jsonl              one line per round: accuracy, loss, bytes per client, rejections,
                               skipped videos, wall time
    checkpoints/last.pt        written atomically: global trainable state, round, the strategy's
                               own state (FedAdam/FedYogi moments, the DP accountant), history
    best.safetensors           the best central top-1 so far
    final.safetensors          the trainable state after the last round (`aimfl eval`/`predict`)
    final.json, plots/*.png    summary; accuracy and loss per round, cumulative bytes, label
                               distribution per client (simulation: from the partition summary)

`resume=true` loads `checkpoints/last.pt` and continues the round numbering; the result equals
an uninterrupted run. A round that fewer than `min-nodes` nodes answered within `round-timeout`
ends the run after the last finished round, with a message saying how to continue it.
"""

from __future__ import annotations

import json
import os
import time
from logging import ERROR, INFO

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from aim_core.annotations import class_names_of, read_annotations
from aim_core.config import to_dict
from aim_core.evaluation import order_pairs_of
from aim_core.federated import (
    UPDATE_DTYPES,
    FederatedSettings,
    decode_state,
    encode_state,
    evaluate_records,
    experiment_config,
    payload_bytes,
)
from aim_core.model import build_model
from aim_core.train import atomic_torch_save
from aim_core.trainable import count_parameters, load_trainable_state, save_trainable, trainable_state
from server.plots import plot_rounds
from server.strategy import RoundIncomplete, build_strategy

app = ServerApp()
def strategy_state(strategy) -> dict:
    """What a strategy carries from round to round: FedAdam/FedYogi moments, the DP accountant's releases."""
    state = {name: getattr(strategy, name) for name in ("m_t", "v_t") if getattr(strategy, name, None) is not None}
    if getattr(strategy, "accountant", None) is not None:
        state["accountant"] = strategy.accountant.state_dict()
    return state


def restore_strategy_state(strategy, state: dict) -> None:
    for name, value in state.items():
        if name == "accountant":
            strategy.accountant.load_state_dict(value)
        else:
            setattr(strategy, name, value)


class FederatedRun:
    """The server's side of one run: the model for central evaluation, history, checkpoints."""

    def __init__(self, settings: FederatedSettings):
        self.settings = settings
        self.cfg = experiment_config(settings)
        self.out = os.path.abspath(settings.out_dir)
        self.ckpt_path = os.path.join(self.out, "checkpoints", "last.pt")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(self.cfg.seed)  # the same initial adapters and head as `aimfl train`
        self.model = build_model(self.cfg.model).to(self.device)
        self.counts = count_parameters(self.model)
        self.val_records = read_annotations(self.cfg.data.val_list, self.cfg.data.list_format,
                                            self.cfg.data.class_names) if self.cfg.data.val_list else []
        self.order_pairs = order_pairs_of(self.cfg.data.root)
        self.history: list[dict] = []
        self.rounds_done = 0
        self.best_top1 = -1.0
        self.started = time.time()

    def initial_state(self, strategy) -> ArrayRecord:
        """The global state to start from: the fresh model's, or the last checkpoint's when resuming."""
        if self.settings.resume and os.path.isfile(self.ckpt_path):
            state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
            if state["strategy"] != self.settings.strategy:
                raise ValueError(f"{self.ckpt_path} was written by strategy {state['strategy']!r}, "
                                 f"not {self.settings.strategy!r}; resume with the same strategy")
            restore_strategy_state(strategy, state["strategy_state"])
            self.history, self.rounds_done, self.best_top1 = state["history"], state["round"], state["best_top1"]
            load_trainable_state(self.model, {k: v.to(self.device) for k, v in state["arrays"].items()},
                                 source=self.ckpt_path)
            log(INFO, "resuming after round %d from %s", self.rounds_done, self.ckpt_path)
        elif self.settings.resume:
            log(INFO, "resume=true but %s does not exist: starting at round 1", self.ckpt_path)
        os.makedirs(os.path.dirname(self.ckpt_path), exist_ok=True)
        with open(os.path.join(self.out, "metrics.jsonl"), "w") as f:  # rounds after the checkpoint are redone
            f.writelines(json.dumps(record) + "\n" for record in self.history)
        return encode_state(trainable_state(self.model), "fp32")

    def central_evaluation(self) -> dict:
        result = evaluate_records(self.model, self.cfg, self.val_records, self.cfg.data.root, self.device,
                                  self.order_pairs)
        return {"top1": result["top1"], "top5": result["top5"], "loss": result["loss"], "skipped": result["skipped"],
                **({"order_top1": result["order_top1"]} if "order_top1" in result else {})}

    def end_round(self, strategy, local_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by the strategy after each round (and once before the first, which is skipped)."""
        if local_round == 0:
            return None
        server_round = local_round + strategy.round_offset
        load_trainable_state(self.model, {k: v.to(self.device) for k, v in decode_state(arrays).items()},
                             source=f"the global state of round {server_round}")
        round_log = strategy.round_log
        nodes = round_log["nodes"]
        record = {
            "round": server_round,
            "accepted_updates": round_log.get("accepted", 0),
            "rejected_updates": len(round_log["rejected"]),
            "rejections": round_log["rejected"],
            "kept_previous_state": round_log.get("kept_previous_state", True),
            "train_loss": _weighted(nodes, "train-loss"),
            "train_videos": sum(n.get("num-examples", 0) for n in nodes.values()),
            "skipped_videos": sum(n.get("skipped-videos", 0) for n in nodes.values()),
            "slowest_client_seconds": max((n.get("train-seconds", 0.0) for n in nodes.values()), default=0.0),
            "train_phase_seconds": round_log.get("train_phase_seconds"),  # instructions out to aggregate in
            "bytes_sent": sum(n["bytes_sent"] for n in nodes.values()),
            "bytes_received": sum(n["bytes_received"] for n in nodes.values()),
            "full_model_bytes_per_client": self.full_model_bytes(),
            "clients": nodes,
            "client_eval": round_log.get("client_eval"),
        }
        every = self.settings.central_eval_every
        if every and (server_round % every == 0 or server_round == self.settings.num_server_rounds):
            record["central"] = self.central_evaluation()
            if record["central"]["top1"] > self.best_top1:
                self.best_top1 = record["central"]["top1"]
                self.save(os.path.join(self.out, "best.safetensors"), server_round)
        previous = self.history[-1]["wall_seconds_total"] if self.history else 0.0
        record["wall_seconds_total"] = previous + time.time() - self.started
        self.started = time.time()
        privacy = getattr(strategy, "privacy_spent", lambda: None)()
        if privacy is not None:
            record["privacy"] = {"epsilon": privacy.epsilon, "delta": privacy.delta}
        self.history.append(record)
        with open(os.path.join(self.out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        atomic_torch_save({"round": server_round, "arrays": {k: v.cpu().clone() for k, v in
                                                               trainable_state(self.model).items()},
                           "strategy": self.settings.strategy, "strategy_state": strategy_state(strategy),
                           "history": self.history, "best_top1": self.best_top1}, self.ckpt_path)
        central = record.get("central")
        log(INFO, "round %d: %d accepted, %d rejected, train loss %s, %.1f MB sent, %.1f MB received%s",
                 server_round, record["accepted_updates"], record["rejected_updates"],
                 "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}",
                 record["bytes_sent"] / 1e6, record["bytes_received"] / 1e6,
                 f", central top-1 {central['top1']:.1%}" if central else "")
        return MetricRecord({f"central-{k}": float(v) for k, v in central.items() if v is not None}) if central else None

    def full_model_bytes(self) -> int:
        """What sending the whole model (frozen backbone included) would cost, in the wire dtype."""
        return self.counts["total_params"] * np.dtype(UPDATE_DTYPES[self.settings.update_dtype]).itemsize

    def save(self, path: str, server_round: int) -> None:
        save_trainable(self.model, path, to_dict(self.cfg),
                       {"class_names": json.dumps(class_names_of(self.cfg.data)), "round": str(server_round),
                        "federated_strategy": self.settings.strategy})

    def finish(self, strategy) -> dict:
        last = self.history[-1] if self.history else {}
        wire = encode_state(trainable_state(self.model), self.settings.update_dtype)
        summary = {
            "rounds_done": last.get("round", 0), "num_server_rounds": self.settings.num_server_rounds,
            "strategy": self.settings.strategy, **self.counts,
            "bytes_per_update": payload_bytes(wire), "full_model_bytes": self.full_model_bytes(),
            "update_dtype": self.settings.update_dtype,
            "central": next((r["central"] for r in reversed(self.history) if "central" in r), None),
            "best_central_top1": self.best_top1 if self.best_top1 >= 0 else None,
            "rejected_updates": sum(r["rejected_updates"] for r in self.history),
            "skipped_videos": sum(r["skipped_videos"] for r in self.history),
            "wall_seconds": last.get("wall_seconds_total"),
        }
        privacy = getattr(strategy, "privacy_spent", lambda: None)()
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


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = FederatedSettings.from_run_config(context.run_config)
    run = FederatedRun(settings)
    strategy = build_strategy(settings, population=settings.min_nodes)
    initial = run.initial_state(strategy)
    strategy.round_offset = run.rounds_done
    rounds = settings.last_round - run.rounds_done
    log(INFO, "%s: rounds %d..%d of %d, %s trainable of %s parameters, %.2f MB per update (%s)",
             settings.strategy, run.rounds_done + 1, settings.last_round, settings.num_server_rounds,
             f"{run.counts['trainable_params']:,}", f"{run.counts['total_params']:,}",
             payload_bytes(encode_state(decode_state(initial), settings.update_dtype)) / 1e6, settings.update_dtype)
    if rounds > 0:
        try:
            strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, timeout=settings.round_timeout,
                           train_config=ConfigRecord({}), evaluate_config=ConfigRecord({}),
                           evaluate_fn=lambda local_round, arrays: run.end_round(strategy, local_round, arrays))
        except RoundIncomplete as err:
            finished = run.history[-1]["round"] if run.history else 0
            log(ERROR, "run stopped: %s. The last finished round is %d (%s). Start the missing SuperNodes and run "
                       "again with resume=true to continue from round %d.", err, finished,
                run.ckpt_path if finished else "no checkpoint yet", finished + 1)
            return
    summary = run.finish(strategy)
    log(INFO, "done: %s", json.dumps({k: v for k, v in summary.items() if k != "central"}))
