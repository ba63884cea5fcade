"""Federated overheads: per-round framework overhead of a real simulation, and server aggregation at scale.

    python benchmarks/federated.py [--rounds 3] [--updates 20] [--out benchmarks/results/federated_cpu.json]

1. Round overhead: a `flwr run` simulation of 4 clients on the tiny random AIM model over a
   synthetic world, all 4 clients concurrent (Ray is told there are 4 CPUs). Per round:
   the training phase (instructions out to aggregate in) minus the slowest client's training.
2. Aggregation: 20 client updates shaped like CLIP ViT-B/16 AIM on Kinetics-400 (10.97M trainable
   parameters each, fp32), validated and averaged by the server's FedAvg: wall time and the peak
   resident memory above the level before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self):
        self.base, self.peak, self.running = rss_bytes(), 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes() - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def round_overhead(rounds: int, work: str) -> dict:
    from aim_core.data.annotations import read_annotations
    from aim_core.data.partition import write_partitions
    from aim_core.data.synthetic import make_synthetic
    from aimfl.simulation import run_simulation

    world = os.path.join(work, "world")
    make_synthetic(world, train_per_class=8, val_per_class=2, progress=False)
    parts = os.path.join(work, "parts")
    write_partitions(read_annotations(os.path.join(world, "train.txt"), "list"), parts, "iid", 4, 0.5, 2, seed=0)
    out = os.path.join(work, "run")
    overrides = ["model.backbone.checkpoint=null", "model.backbone.overrides.embed_dim=32",
                 "model.backbone.overrides.depth=2", "model.backbone.overrides.num_heads=2", f"data.root={world}",
                 "data.num_frames=4", "data.num_workers=0", "data.input_size=32", "data.short_side=32"]
    config = {"config": "synthetic", "overrides": " ".join(overrides), "num-server-rounds": rounds, "batch-size": 4,
              "min-nodes": 4, "client-eval-every": 0, "local-val-fraction": 0.0, "central-eval-every": 0,
              "partition-dir": parts, "out-dir": out}
    started = time.time()
    run_simulation(config, 4, os.path.join(work, "flwr.log"), ray_cpus=4, echo=lambda line: None)
    wall = time.time() - started
    with open(os.path.join(out, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f]
    per_round = [{"round": r["round"], "train_phase_seconds": r["train_phase_seconds"],
                  "slowest_client_seconds": r["slowest_client_seconds"],
                  "overhead_seconds": r["train_phase_seconds"] - r["slowest_client_seconds"]} for r in history]
    steady = per_round[1:] or per_round  # round 1 includes building the model in every Ray worker
    return {"clients": 4, "rounds": rounds, "flwr_run_wall_seconds": round(wall, 1), "per_round": per_round,
            "steady_overhead_fraction": statistics.mean(r["overhead_seconds"] / r["train_phase_seconds"]
                                                        for r in steady)}


def aggregation(updates: int) -> dict:
    from flwr.app import Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from aim_core.config import load_config
    from aim_core.federated.codec import encode_state
    from aim_core.federated.settings import APP_ROOT, FederatedSettings, default_run_config
    from aim_core.model.factory import build_model
    from aim_core.model.trainable import trainable_state

    sys.path.insert(0, APP_ROOT)  # the Flower app's server/ package is not installed; it lives in the app folder
    from server.strategy import ValidatedRounds, build_strategy

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # as inside a ServerApp
    cfg = load_config("k400_clip_vit_b16_8f", ["model.backbone.pretrained=null"])  # shapes only: no download
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in trainable_state(build_model(cfg.model)).items()}
    params = sum(int(np.prod(s)) for s in shapes.values())
    generator = torch.Generator().manual_seed(0)
    global_state = {k: torch.randn(s, generator=generator) * 0.02 for k, s in shapes.items()}
    settings = FederatedSettings.from_run_config({**default_run_config(), "min-nodes": updates})
    rounds = ValidatedRounds(build_strategy(settings), settings)
    instructions, replies = [], []
    for node in range(updates):
        state = {k: v + torch.randn(v.shape, generator=generator) * 1e-3 for k, v in global_state.items()}
        instruction = Message(RecordDict({"arrays": encode_state(global_state, "fp32")}), dst_node_id=node + 1,
                              message_type="train")
        instructions.append(instruction)
        replies.append(Message(RecordDict({"arrays": encode_state(state, "fp32"), "metrics": MetricRecord(
            {"train-loss": 1.0, "num-examples": 100 + node, "skipped-videos": 0, "train-seconds": 1.0})}),
            reply_to=instruction))
    with PeakMemory() as memory:
        started = time.perf_counter()
        outcome = rounds.aggregate_train(1, encode_state(global_state, "fp32"), instructions, replies)
        seconds = time.perf_counter() - started
    assert outcome.arrays is not None and outcome.accepted == updates
    return {"updates": updates, "trainable_params_per_update": params, "update_mb": params * 4 / 1e6,
            "aggregation_seconds": round(seconds, 3), "peak_memory_mb": round(memory.peak / 1e6, 1),
            "includes": "validation of every reply (keys, shapes, dtype, finiteness, norm) + FedAvg"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/federated_cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = {"device": "cpu", "cpu_cores": os.cpu_count(), "round_overhead": round_overhead(args.rounds, work),
                   "aggregation": aggregation(args.updates)}
    print(json.dumps(results, indent=2))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
