"""`aimfl demo --out DIR`: the project's main job on the embedded default, in minutes on a CPU.

1. the synthetic world (`aimfl make-synthetic`), unless it exists;
2. the embedded pre-trained image model (`aimfl pretrain-image demo`), cached;
3. a non-IID split of its training list over `demo.clients` clients (`aimfl partition`);
4. the frozen image model with a trained head (space-only) and centralized AIM (`aimfl train`);
5. federated AIM: the Flower ServerApp and ClientApps on the simulation engine (`flwr run`),
   `demo.rounds` rounds of `demo.local_epochs` epochs on each client's shard, same lr, batch and seed;
6. a table, `results.json` and plots in DIR.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

from omegaconf import OmegaConf

from aim_core.config import load_config, to_dict
from aim_core.data.annotations import read_annotations
from aim_core.data.partition import write_partitions
from aim_core.engine.run_dir import open_run_dir
from aimfl.simulation import run_simulation
from aimfl.staging import federated_progress, federated_run_config, prepare_backbone, prepare_world, step
from aimfl.train import run as train


def run_demo(out: str, data_root: str, config: str = "demo", overrides: tuple[str, ...] = ()) -> dict:
    started = time.time()
    out, data_root = os.path.abspath(out), os.path.abspath(data_root)
    cfg = load_config(config, [f"data.root={data_root}", *overrides])
    open_run_dir(out, overwrite=True, key="--out")  # one demo at a time in a folder
    if os.path.isfile(os.path.join(out, "results.json")):
        print(f"    {out} holds an earlier demo report: it is replaced")
    demo = cfg.demo

    step(1, f"synthetic world in {data_root}")
    prepare_world(data_root)
    checkpoint = os.path.expanduser(cfg.model.backbone.checkpoint)
    step(2, f"embedded pre-trained image model: {checkpoint}")
    prepare_backbone(cfg)
    cfg.model.backbone.checkpoint = checkpoint
    setup_seconds = time.time() - started  # the world and the image model: minutes from a fresh cache

    step(3, f"{demo.scheme} split over {demo.clients} clients")
    partitions = os.path.join(out, "partitions")
    records = read_annotations(cfg.data.train_list, "list")
    summary = write_partitions(records, partitions, demo.scheme, demo.clients, demo.alpha, 2, cfg.seed,
                               num_classes=cfg.data.num_classes, min_size=cfg.schedule.batch_size,
                               source=cfg.data.train_list)
    print(f"    videos per client {[c['samples'] for c in summary['per_client']]}, "
          f"mean class entropy {summary['mean_class_entropy_bits']:.2f} bits")

    runs = {}
    for number, (name, variant) in ((4, ("space_only", "space_only")), (5, ("centralized", "aim"))):
        step(number, f"{name}: {variant}, {cfg.schedule.epochs} epochs, centralized")
        run_cfg = OmegaConf.merge(cfg, {"model": {"variant": variant}, "output_dir": os.path.join(out, name),
                                        "overwrite": True})
        runs[name] = train(run_cfg)

    rounds = demo.rounds
    step(6, f"federated AIM: {demo.clients} clients x {rounds} rounds of {demo.local_epochs} local epoch(s), Flower "
            f"simulation")
    fed_out = os.path.join(out, "federated")
    run_config = federated_run_config(
        cfg, config, overrides, **{"num-server-rounds": rounds, "local-epochs": demo.local_epochs,
                                   "warmup-rounds": math.ceil(cfg.schedule.warmup_epochs / demo.local_epochs),
                                   "strategy": demo.strategy, "client-optimizer": demo.client_optimizer,
                                   "update-codec": demo.codec, "downlink-codec": demo.downlink_codec,
                                   "min-nodes": demo.clients, "central-eval-every": demo.central_eval_every,
                                   "partition-dir": partitions, "out-dir": fed_out, "overwrite": True})
    log_path = os.path.join(out, "federated.log")
    # every client at once, on client_cpus threads each, the OS sharing the cores: on 2 cores and 4 clients of
    # unequal shards, a round then ends 12% sooner than when Ray runs 2 at a time and a core waits (README)
    code = run_simulation(run_config, demo.clients, log_path, client_cpus=demo.client_cpus, echo=federated_progress,
                          ray_cpus=demo.clients * demo.client_cpus)
    final_path = os.path.join(fed_out, "final.json")
    if code or not os.path.isfile(final_path):
        raise RuntimeError(f"the federated run wrote no {final_path}; see {log_path}")
    with open(final_path) as f:
        federated = json.load(f)

    results = {
        "space_only_top1": runs["space_only"]["val_top1"],
        "federated_top1": federated["central"]["top1"],
        "centralized_top1": runs["centralized"]["val_top1"],
        "space_only_order_top1": runs["space_only"].get("val_order_top1"),
        "federated_order_top1": federated["central"].get("order_top1"),
        "centralized_order_top1": runs["centralized"].get("val_order_top1"),
        "trainable_params": federated["trainable_params"],
        "total_params": federated["total_params"],
        "space_only_trainable_params": runs["space_only"]["trainable_params"],
        "space_only_total_params": runs["space_only"]["total_params"],
        "bytes_per_update": federated["bytes_per_update"],
        "full_model_bytes": federated["full_model_bytes"],
        "codec": federated["update_codec"],
        "downlink_codec": federated["downlink_codec"],
        "bytes_total": federated["bytes_total"],
        "clients": demo.clients, "rounds": rounds, "local_epochs": demo.local_epochs, "epochs": cfg.schedule.epochs,
        "partition": {"scheme": demo.scheme, "alpha": demo.alpha,
                      "videos_per_client": [c["samples"] for c in summary["per_client"]]},
        "rejected_updates": federated["rejected_updates"],
        "wall_seconds": {"world_and_image_model": round(setup_seconds, 1),
                         "space_only": runs["space_only"]["wall_seconds"],
                         "centralized": runs["centralized"]["wall_seconds"],
                         "federated_rounds": federated["wall_seconds"], "total": round(time.time() - started, 1)},
        "config": to_dict(cfg),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    plot_comparison(results, os.path.join(out, "comparison.png"))
    for name in ("accuracy", "loss", "bytes", "label_distribution"):
        source = os.path.join(fed_out, "plots", f"{name}.png")
        if os.path.isfile(source):
            shutil.copy(source, os.path.join(out, f"federated_{name}.png"))
    print("\n" + table(results))
    print(f"\nreport in {out}: results.json, comparison.png, federated_*.png; "
          f"total {results['wall_seconds']['total']:.0f} s")
    return results


def table(results: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    trainable, total = results["trainable_params"], results["total_params"]
    rows = [
        ("frozen space-only (head only)", results["space_only_top1"], results["space_only_order_top1"],
         f"{results['space_only_trainable_params']:,} / {results['space_only_total_params']:,}"),
        (f"federated AIM ({results['clients']} clients, {results['rounds']} rounds x {results['local_epochs']} "
         f"local epochs)", results["federated_top1"],
         results["federated_order_top1"], f"{trainable:,} / {total:,}"),
        ("centralized AIM", results["centralized_top1"], results["centralized_order_top1"],
         f"{trainable:,} / {total:,}"),
    ]
    lines = ["| run | top-1 | order-only pairs top-1 | trainable / total params |", "|---|---|---|---|"]
    lines += [f"| {name} | {pct(top1)} | {pct(order)} | {params} |" for name, top1, order, params in rows]
    per_update, full = results["bytes_per_update"], results["full_model_bytes"]
    lines.append(f"\nbytes per client update ({results['codec']}): {per_update:,} "
                 f"(the full model would be {full:,}: {per_update / full:.1%})")
    return "\n".join(lines)


def plot_comparison(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = ["space-only", "federated AIM", "centralized AIM"]
    keys = ["space_only", "federated", "centralized"]
    overall = [results[f"{k}_top1"] for k in keys]
    order = [results[f"{k}_order_top1"] or 0.0 for k in keys]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar(x - 0.2, overall, 0.4, label="all classes")
    ax.bar(x + 0.2, order, 0.4, label="order-only pairs")
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.text(len(names) - 0.5, 0.51, "frame-order-blind limit on the pairs", fontsize=7, ha="right", color="grey")
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1.05), ylabel="top-1 on the val list", title="aimfl demo: synthetic world")
    for i, (a, b) in enumerate(zip(overall, order)):
        ax.text(i - 0.2, a + 0.01, f"{a:.0%}", ha="center", fontsize=8)
        ax.text(i + 0.2, b + 0.01, f"{b:.0%}", ha="center", fontsize=8)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
