"""Plots of a federated run, from its per-round history (metrics.jsonl)."""

from __future__ import annotations

import json
import os


def plot_rounds(history: list[dict], out_dir: str, partition_summary: str | None = None,
                class_names: list[str] | None = None) -> None:
    """accuracy.png (central and client top-1), loss.png, bytes.png (cumulative traffic vs the full model)
    and, given the partition's summary.json, label_distribution.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aim_core.data.partition import plot_label_distribution

    os.makedirs(out_dir, exist_ok=True)
    rounds = [r["round"] for r in history]

    def series(*path):
        points = []
        for r in history:
            value = r
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                points.append((r["round"], value))
        return points

    def plot_series(lines, ylabel: str, title: str, name: str, ylim=None) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in lines:
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
        ax.set(xlabel="round", ylabel=ylabel, title=title, ylim=ylim)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=120)
        plt.close(fig)

    plot_series([("central top-1 (val list)", series("central", "top1")),
                 ("central top-1, order-only pairs", series("central", "order_top1")),
                 ("client top-1 (held-out local videos)", series("client_eval", "eval-top1"))],
                "top-1", "Accuracy per round", "accuracy.png", ylim=(0, 1.02))
    plot_series([("client training loss", series("train_loss")), ("central val loss", series("central", "loss")),
                 ("client eval loss", series("client_eval", "eval-loss"))],
                "cross-entropy", "Loss per round", "loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    sent, received, full, total_s, total_r, total_f = [], [], [], 0, 0, 0
    for r in history:
        total_s += r["bytes_sent"]
        total_r += r["bytes_received"]
        total_f += 2 * r["full_model_bytes_per_client"] * r["accepted_updates"]
        sent.append(total_s / 1e6)
        received.append(total_r / 1e6)
        full.append(total_f / 1e6)
    ax.plot(rounds, sent, marker="o", label="sent to clients (trainable state)")
    ax.plot(rounds, received, marker="o", label="received from clients")
    ax.plot(rounds, full, linestyle="--", label="both ways, if the full model travelled")
    ax.set(xlabel="round", ylabel="cumulative MB", title="Traffic", yscale="log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "bytes.png"), dpi=120)
    plt.close(fig)

    if partition_summary:
        with open(partition_summary) as f:
            summary = json.load(f)
        plot_label_distribution({**summary, "clients": summary["per_client"]},
                                os.path.join(out_dir, "label_distribution.png"), class_names)
