"""Federated splits of a video list with flwr-datasets partitioners.

Schemes: `iid` (IidPartitioner on a seeded shuffle), `dirichlet` (DirichletPartitioner
over labels, concentration `alpha`), `pathological` (PathologicalPartitioner: exactly K
classes per client, each class's videos split evenly among its owners; the classes are
dealt from a seeded permutation so that every class has an owner, e.g. FedVSSL's
Kinetics-400 split of 100 clients x 8 classes gives every class to exactly 2 clients) and `natural`
(NaturalIdPartitioner over the list's group column: a site or uploader id).

Writes one `client_XXX.txt` list per client (same `path label [group]` format, same
relative paths), `summary.json` (samples and class histogram per client, mean class
entropy) and `label_distribution.png`. Partitions are deterministic for a seed,
disjoint and cover every sample; anything else is an error.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from aim_core.data.annotations import VideoRecord, write_path_label_list

SCHEMES = ("iid", "dirichlet", "pathological", "natural")


class PartitionError(ValueError):
    """A split that cannot be made as asked (the scheme, the client count, the class count)."""


def covering_pathological_partitioner(clients: int, classes_per_client: int, seed: int):
    """flwr-datasets' PathologicalPartitioner with a class assignment that leaves no class out.

    Its own modes pick classes at random (or consecutively), which for Kinetics-400 with 100
    clients x 8 classes leaves dozens of classes, and their videos, without a client. Here client
    i takes positions iK .. iK+K-1 (mod C) of one seeded permutation of the C classes: K distinct
    classes each, and every class dealt at least once when clients x K >= C.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    class CoveringPathologicalPartitioner(PathologicalPartitioner):
        def _determine_partition_id_to_unique_labels(self) -> None:
            self._unique_labels = sorted(self.dataset.unique(self._partition_by))
            num_classes = len(self._unique_labels)
            if self._num_partitions * self._num_classes_per_partition < num_classes:
                raise PartitionError(
                    f"{self._num_partitions} clients x {self._num_classes_per_partition} classes cannot cover "
                    f"{num_classes} classes; raise --clients or --classes-per-client"
                )
            if self._num_classes_per_partition > num_classes:
                raise PartitionError(f"--classes-per-client={self._num_classes_per_partition} > {num_classes} classes")
            order = np.random.default_rng(seed).permutation(num_classes)
            k = self._num_classes_per_partition
            for pid in range(self._num_partitions):
                self._partition_id_to_unique_labels[pid] = [
                    self._unique_labels[order[(pid * k + j) % num_classes]] for j in range(k)
                ]

    return CoveringPathologicalPartitioner(num_partitions=clients, partition_by="label",
                                           num_classes_per_partition=classes_per_client, seed=seed)


def partition_path(folder: str, partition: int) -> str:
    """Where `write_partitions` puts the list of client `partition`."""
    return os.path.join(folder, f"client_{partition:03d}.txt")


def partition_lists(folder: str) -> dict[int, str]:
    """The client lists `write_partitions` wrote into `folder`: partition id -> path (none if no such folder)."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    found = (re.fullmatch(r"client_(\d{3,})\.txt", name) for name in names)
    return dict(sorted((int(match[1]), os.path.join(folder, match[0])) for match in found if match))


def partition_indices(
    records: list[VideoRecord],
    scheme: str,
    clients: int | None,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    seed: int = 0,
    min_size: int = 1,
) -> list[list[int]]:
    """Indices into `records` for each client."""
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
    )

    table = {"idx": list(range(len(records))), "label": [r.label for r in records]}
    if scheme == "natural":
        if any(r.group is None for r in records):
            raise PartitionError("the natural scheme needs a group column (path label group) on every line")
        table["group"] = [r.group for r in records]
    dataset = Dataset.from_dict(table)
    if scheme != "natural" and not clients:
        raise PartitionError(f"--clients is required for the {scheme} scheme")
    if scheme == "iid":
        dataset = dataset.shuffle(seed=seed)  # IidPartitioner shards contiguously
        partitioner = IidPartitioner(num_partitions=clients)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(num_partitions=clients, partition_by="label", alpha=alpha,
                                           min_partition_size=min_size, self_balancing=False, seed=seed)
    elif scheme == "pathological":
        partitioner = covering_pathological_partitioner(clients, classes_per_client, seed)
    elif scheme == "natural":
        partitioner = NaturalIdPartitioner(partition_by="group")
    else:
        raise PartitionError(f"scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    partitioner.dataset = dataset
    if scheme == "natural" and clients and clients != partitioner.num_partitions:
        raise PartitionError(f"the list has {partitioner.num_partitions} groups but --clients={clients}")
    try:
        parts = [sorted(partitioner.load_partition(i)["idx"]) for i in range(partitioner.num_partitions)]
    except ValueError as err:  # flwr-datasets gives up drawing a Dirichlet split that satisfies --min-size
        raise PartitionError(f"{scheme} split of {len(records)} samples over {clients} clients: {err} (use fewer "
                             "clients, a larger --alpha or a smaller --min-size)") from None

    covered = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.array([])
    if len(covered) != len(set(covered.tolist())):
        raise RuntimeError("partitions overlap")
    if len(covered) != len(records):
        raise PartitionError(
            f"the {scheme} split leaves {len(records) - len(covered)} of {len(records)} samples without a client "
            "(use fewer clients or, with a Dirichlet split, a smaller --min-size)"
        )
    return parts


def class_entropy(histogram: np.ndarray) -> float:
    """Shannon entropy (bits) of a client's label distribution."""
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log2(p)).sum())


def summarize(records: list[VideoRecord], parts: list[list[int]], num_classes: int) -> dict:
    clients = []
    for i, part in enumerate(parts):
        histogram = np.bincount([records[j].label for j in part], minlength=num_classes)
        clients.append({"client": i, "samples": len(part), "class_histogram": histogram.tolist(),
                        "class_entropy_bits": class_entropy(histogram)})
    return {"clients": clients, "mean_class_entropy_bits": float(np.mean([c["class_entropy_bits"] for c in clients]))}


def plot_label_distribution(summary: dict, path: str, class_names: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.array([c["class_histogram"] for c in summary["clients"]])
    clients, classes = hist.shape
    title = (f"Label distribution per client: {summary['scheme']}\n"
             f"mean class entropy {summary['mean_class_entropy_bits']:.2f} bits")
    if classes > 20:  # stacked bars of hundreds of classes are unreadable (and slow): a heat map
        fig, ax = plt.subplots(figsize=(min(4 + 0.08 * clients, 16), 5))
        image = ax.imshow(hist.T, aspect="auto", interpolation="nearest", cmap="viridis")
        fig.colorbar(image, ax=ax, label="videos")
        ax.set_ylabel("class")
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * clients + 3), 4))
        colours = plt.get_cmap("tab20" if classes > 10 else "tab10")
        bottom = np.zeros(clients)
        for k in range(classes):
            ax.bar(np.arange(clients), hist[:, k], bottom=bottom, color=colours(k % colours.N), width=0.85,
                   label=class_names[k] if class_names else f"class {k}")
            bottom += hist[:, k]
        ax.set_ylabel("videos")
        ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_xlabel("client")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_partitions(
    records: list[VideoRecord],
    out: str,
    scheme: str,
    clients: int | None,
    alpha: float,
    classes_per_client: int,
    seed: int,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    source: str | None = None,
    min_size: int = 1,
) -> dict:
    parts = partition_indices(records, scheme, clients, alpha, classes_per_client, seed, min_size)
    os.makedirs(out, exist_ok=True)
    for i, part in enumerate(parts):
        write_path_label_list(partition_path(out, i), [records[j] for j in part])
    num_classes = num_classes or max(r.label for r in records) + 1
    summary = {"source": source, "scheme": scheme, "clients": len(parts), "alpha": alpha,
               "classes_per_client": classes_per_client, "seed": seed, "samples": len(records)}
    details = summarize(records, parts, num_classes)
    summary["mean_class_entropy_bits"] = details["mean_class_entropy_bits"]
    summary["per_client"] = details["clients"]
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_label_distribution({**summary, "clients": details["clients"]}, os.path.join(out, "label_distribution.png"),
                            class_names)
    return summary
