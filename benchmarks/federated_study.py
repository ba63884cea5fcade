"""Federated AIM on the demo world: which split, strategy, local recipe and codec gets how close to centralized AIM,
and at what cost in bytes.

Every run is a real `flwr run` simulation of `aimfl`'s ServerApp and ClientApps (4 clients) over the demo config and
the embedded image model, with central evaluation on the val list after every round, so that accuracy can be read
per round and against the cumulative bytes of both directions. Runs:

- `grid`: splits (IID, Dirichlet 0.5, pathological 3 classes a client) x strategies (FedAvg, FedProx, FedAdam) at the
  demo's recipe (`demo.rounds` rounds of `demo.local_epochs` local epochs), or at the keys given with `--set`;
- `recipe`: on the Dirichlet split, local epochs per round (1, 2, 3, 5) at the same rounds, and whether a client
  keeps its AdamW moments between rounds (the demo's strategy and client optimiser otherwise);
- `codecs`: on the Dirichlet split with the default recipe: fp32, fp16, int8 (both directions) and top-k (the run
  config's topk-fraction) with error feedback.

    python benchmarks/federated_study.py [--parts grid recipe codecs] [--splits ...] [--out outputs/federated_study]
                                         [--save]

Writes OUT/NAME.json (`--name`, default federated_study), accuracy_per_round.png and accuracy_vs_bytes.png (prefixed
NAME_ for another name; `--save`: also into benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time

from aim_core.config import load_config
from aim_core.data.annotations import read_annotations
from aim_core.data.partition import write_partitions
from aimfl.simulation import run_simulation
from aimfl.staging import federated_run_config, prepare_backbone, prepare_world

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SPLITS = {"iid": {"scheme": "iid"}, "dirichlet0.5": {"scheme": "dirichlet", "alpha": 0.5},
          "pathological3": {"scheme": "pathological", "classes_per_client": 3}}  # 4 clients x 3 cover 10 classes


def runs_of(parts: list[str], defaults: dict, warmup_epochs: int, splits=tuple(SPLITS)) -> list[tuple[str, str, dict]]:
    """(name, split, run-config keys) of every run of the chosen parts."""
    runs = []
    if "recipe" in parts:
        for local in (1, 2, 3, 5):
            runs.append((f"dirichlet0.5/local{local}", "dirichlet0.5",
                         {"local-epochs": local, "warmup-rounds": math.ceil(warmup_epochs / local)}))
        runs += [(f"dirichlet0.5/{kept}-moments", "dirichlet0.5", {"client-optimizer": kept})
                 for kept in ("fresh", "kept")]
    if "codecs" in parts:
        runs += [(f"dirichlet0.5/{codec}", "dirichlet0.5", {"update-codec": codec, "downlink-codec": down})
                 for codec, down in (("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8"), ("topk", "fp16"))]
    if "grid" in parts:
        runs += [(f"{split}/{strategy}", split, {"strategy": strategy}) for split in splits
                 for strategy in ("fedavg", "fedprox", "fedadam")]
    unique = {}  # one run per effective configuration: a codec's fp32 row is the recipe's baseline
    for name, split, keys in runs:
        unique.setdefault(json.dumps([split, {**defaults, **keys}], sort_keys=True), (name, split, keys))
    return list(unique.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ("grid", "recipe", "codecs")
    parser.add_argument("--parts", nargs="+", choices=parts, default=list(parts))
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--out", default="outputs/federated_study")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--splits", nargs="+", choices=list(SPLITS), default=list(SPLITS), help="the grid's splits")
    parser.add_argument("--set", nargs="*", default=[], dest="keys", metavar="KEY=VALUE",
                        help="run-config keys for every run (e.g. local-epochs=2)")
    parser.add_argument("--name", default="federated_study", help="the report's file name (NAME.json), and the "
                        "plots' prefix")
    parser.add_argument("--save", action="store_true", help="also write the JSON and plots to benchmarks/results/")
    args = parser.parse_args()

    out, data = os.path.abspath(args.out), os.path.abspath(args.data)
    cfg = load_config(args.config, [f"data.root={data}"])
    prepare_world(data)
    cfg.model.backbone.checkpoint = os.path.expanduser(cfg.model.backbone.checkpoint)
    prepare_backbone(cfg)
    records = read_annotations(cfg.data.train_list, "list")
    fixed = {key: json.loads(value) if value[:1] in "0123456789-tf" else value
             for key, value in (item.split("=", 1) for item in args.keys)}
    defaults = federated_run_config(cfg, args.config, (), **{
        "num-server-rounds": cfg.demo.rounds, "local-epochs": cfg.demo.local_epochs,
        "warmup-rounds": math.ceil(cfg.schedule.warmup_epochs / cfg.demo.local_epochs),
        "strategy": cfg.demo.strategy, "client-optimizer": cfg.demo.client_optimizer,
        "min-nodes": args.clients, "central-eval-every": 1, "overwrite": True, **fixed})
    rows = []
    for name, split, keys in runs_of(args.parts, defaults, cfg.schedule.warmup_epochs, args.splits):
        partitions = os.path.join(out, "partitions", split)
        if not os.path.isdir(partitions):
            spec = SPLITS[split]
            write_partitions(records, partitions, spec["scheme"], args.clients, spec.get("alpha", 0.5),
                             spec.get("classes_per_client", 2), cfg.seed, num_classes=cfg.data.num_classes,
                             min_size=cfg.schedule.batch_size, source=cfg.data.train_list)
        run_dir = os.path.join(out, "runs", name.replace("/", "_"))
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.time()
        run_simulation({**defaults, **keys, "partition-dir": partitions, "out-dir": run_dir}, args.clients,
                       os.path.join(run_dir + ".log"), echo=lambda line: None, ray_cpus=args.clients)  # as the demo
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            history = [json.loads(line) for line in f]
        with open(os.path.join(run_dir, "final.json")) as f:
            final = json.load(f)
        cumulative, rounds = 0, []
        for record in history:
            cumulative += record["bytes_sent"] + record["bytes_received"]
            central = record.get("central") or {}
            rounds.append({"round": record["round"], "top1": central.get("top1"),
                           "order_top1": central.get("order_top1"), "cumulative_bytes": cumulative})
        rows.append({"run": name, "split": split, **keys, "final_top1": final["central"]["top1"],
                     "final_order_top1": final["central"].get("order_top1"),
                     "best_top1": final["best_central_top1"], "bytes_per_update": final["bytes_per_update"],
                     "downlink_bytes": final["downlink_bytes"], "bytes_total": final["bytes_total"],
                     "rejected_updates": final["rejected_updates"], "wall_seconds": round(time.time() - started, 1),
                     "rounds": rounds})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "rounds"}), flush=True)

    report = {"config": args.config, "clients": args.clients, "defaults": defaults, "rows": rows,
              "markdown": table(rows)}
    print(report["markdown"])
    folders = [out] + ([RESULTS] if args.save else [])
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{args.name}.json"), "w") as f:
            json.dump(report, f, indent=2)
        plot(rows, folder, "" if args.name == "federated_study" else f"{args.name}_")


def table(rows: list[dict]) -> str:
    lines = ["| run | final top-1 | order-only pairs | best top-1 | MB per update | MB in all | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        order = "-" if r["final_order_top1"] is None else f"{r['final_order_top1']:.1%}"
        lines.append(f"| {r['run']} | {r['final_top1']:.1%} | {order} | {r['best_top1']:.1%} | "
                     f"{r['bytes_per_update'] / 1e6:.3f} | {r['bytes_total'] / 1e6:.1f} | {r['wall_seconds']:.0f} s |")
    return "\n".join(lines)


def plot(rows: list[dict], folder: str, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, x_key, xlabel in (("accuracy_per_round", "round", "round"),
                                ("accuracy_vs_bytes", "cumulative_bytes", "cumulative MB, both directions")):
        codecs = [r for r in rows if r["split"] == "dirichlet0.5" and "local-epochs" not in r
                  and "client-optimizer" not in r and "strategy" not in r]
        chosen = rows if x_key == "round" else codecs or rows
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for r in chosen:
            points = [(p[x_key] / (1e6 if x_key != "round" else 1), p["top1"]) for p in r["rounds"]
                      if p["top1"] is not None]
            if points:
                ax.plot(*zip(*points), marker=".", label=r["run"])
        ax.set(xlabel=xlabel, ylabel="central top-1", ylim=(0, 1.02), title=f"federated AIM, demo world: {name}")
        if x_key != "round":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(folder, f"{prefix}{name}.png"), dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
