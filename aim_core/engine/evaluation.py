"""Multi-view evaluation: softmax averaged over clips x crops, as the paper tests.

`evaluate` runs a loader of test items (B, views, T, C, H, W), averages each video's view
probabilities, and gathers the results of all DDP ranks by dataset index (so the padding
of DistributedSampler is not counted twice). `report` turns them into top-1/top-5,
per-class accuracy, the confusion matrix and, for the synthetic world, the accuracy on
the order-only class pairs. `evaluate_and_report` is the two together, and `evaluate_records` all of
it for a list of videos, as every command runs them.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import torch
import torch.distributed as dist

from aim_core.config import progress_options
from aim_core.data.annotations import VideoRecord
from aim_core.data.video import VideoReadError, video_dataset
from aim_core.engine.loaders import evaluation_loader
from aim_core.engine.precision import autocast, resolve_precision


@torch.no_grad()
def average_view_probabilities(model: torch.nn.Module, views: torch.Tensor, max_views_per_forward: int,
                               precision: str = "fp32") -> torch.Tensor:
    """views: (B, V, T, C, H, W) -> class probabilities (B, classes), the mean of the V views' softmax.

    At most `max_views_per_forward` clips go through the model at once, to bound memory.
    """
    batch, num_views = views.shape[:2]
    flat = views.flatten(0, 1)
    with autocast(flat.device, precision):
        probs = torch.cat([model(chunk).float().softmax(dim=-1) for chunk in flat.split(max_views_per_forward)])
    return probs.view(batch, num_views, -1).mean(dim=1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, max_views_per_forward: int,
             precision: str = "fp32", progress: bool = False) -> dict:
    """Returns {"probs": (N, K) array, "labels": (N,), "skipped": int}, ordered by dataset index."""
    from tqdm import tqdm

    model.eval()
    indices, probs, labels, skipped = [], [], [], 0
    for batch in tqdm(loader, desc="eval", leave=False, **progress_options(progress)):
        skipped += int(batch["skipped"].sum())
        if batch["video"] is None:  # every video of the batch was unreadable
            continue
        p = average_view_probabilities(model, batch["video"].to(device), max_views_per_forward, precision)
        indices.append(batch["index"])
        probs.append(p.cpu())
        labels.append(batch["label"])
    local = (indices, probs, labels, skipped)
    if dist.is_available() and dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    by_index = {}
    for rank_indices, rank_probs, rank_labels, _ in gathered:
        for idx, p, y in zip(rank_indices, rank_probs, rank_labels):
            for i, row, label in zip(idx.tolist(), p, y.tolist()):
                by_index[i] = (row, label)
    skipped = sum(g[3] for g in gathered)
    if not by_index:
        raise VideoReadError(f"none of the {skipped} videos to evaluate could be read; check the data root and the "
                             "list (the log names each unreadable file)")
    order = sorted(by_index)
    return {
        "probs": torch.stack([by_index[i][0] for i in order]).numpy(),
        "labels": np.array([by_index[i][1] for i in order]),
        "skipped": skipped,
    }


def report(probs: np.ndarray, labels: np.ndarray, order_pairs: list[list[int]] | None = None) -> dict:
    num_classes = probs.shape[1]
    ranked = np.argsort(-probs, axis=1)
    top1 = ranked[:, 0] == labels
    top5 = (ranked[:, : min(5, num_classes)] == labels[:, None]).any(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, ranked[:, 0]), 1)
    counts = confusion.sum(axis=1)
    per_class = np.where(counts > 0, np.diag(confusion) / np.maximum(counts, 1), np.nan)
    result = {
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "videos": int(len(labels)),
        "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class],
        "confusion": confusion.tolist(),
    }
    if order_pairs:
        in_pairs = np.isin(labels, np.array(order_pairs).reshape(-1))
        result["order_top1"] = float(top1[in_pairs].mean()) if in_pairs.any() else None
        result["appearance_top1"] = float(top1[~in_pairs].mean()) if (~in_pairs).any() else None
    return result


def evaluate_and_report(model: torch.nn.Module, loader, cfg, device: torch.device, progress: bool = False) -> dict:
    """`report` of a loader of test items, plus the cross-entropy of the view-averaged probabilities (`loss`) and
    the unreadable videos skipped (`skipped`); the order-only pairs are scored when the data root is a
    synthetic world."""
    result = evaluate(model, loader, device, cfg.data.max_views_per_forward,
                      resolve_precision(cfg.schedule.precision, device), progress=progress)
    picked = result["probs"][np.arange(len(result["labels"])), result["labels"]]
    loss = float(-np.log(np.clip(picked, 1e-12, None)).mean())
    return {**report(result["probs"], result["labels"], order_pairs_of(loader.dataset.root)), "loss": loss,
            "skipped": result["skipped"]}


def evaluate_records(model: torch.nn.Module, cfg, records: list[VideoRecord], root: str, device: torch.device,
                     progress: bool = False) -> dict:
    """`evaluate_and_report` on `records` (paths relative to `root`), decoded and viewed as `cfg` tests."""
    loader = evaluation_loader(video_dataset(cfg, records, root, train=False), cfg)
    return evaluate_and_report(model, loader, cfg, device, progress)


def order_pairs_of(data_root: str) -> list[list[int]] | None:
    """The order-only class pairs of a synthetic world (from its synthetic.json), else None."""
    path = os.path.join(data_root or "", "synthetic.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)["order_pairs"]


def write_report_files(result: dict, class_names: list[str], out_dir: str) -> None:
    """per_class_accuracy.csv, confusion_matrix.png and eval.json in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    confusion = np.array(result["confusion"])
    with open(os.path.join(out_dir, "per_class_accuracy.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class_index", "class_name", "videos", "top1"])
        for k, name in enumerate(class_names):
            acc = result["per_class_accuracy"][k]
            writer.writerow([k, name, int(confusion[k].sum()), "" if acc is None else f"{acc:.4f}"])
    size = min(0.45 * len(class_names) + 3, 24)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    normalised = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if len(class_names) <= 40:
        ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix: top-1 {result['top1']:.1%}, top-5 {result['top5']:.1%}", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "confusion_matrix.png"), dpi=120)
    plt.close(fig)
    with open(os.path.join(out_dir, "eval.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "confusion"}, f, indent=2)
