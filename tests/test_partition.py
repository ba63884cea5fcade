"""Federated splits: disjoint, complete, deterministic; Dirichlet skew measured."""

import json
import subprocess
import sys

import numpy as np
import pytest

from aim_core.data.annotations import VideoRecord
from aim_core.data.partition import partition_indices, summarize


@pytest.fixture(scope="module")
def records():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 30)
    return [VideoRecord(f"v{i}.mp4", int(label), f"site{rng.integers(4)}") for i, label in enumerate(labels)]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological", "natural"])
def test_partitions_are_disjoint_complete_and_deterministic(records, scheme):
    clients = None if scheme == "natural" else 6
    parts = partition_indices(records, scheme, clients, alpha=0.3, classes_per_client=3, seed=1)
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == len(records)
    assert parts == partition_indices(records, scheme, clients, alpha=0.3, classes_per_client=3, seed=1)


def test_seed_changes_the_split(records):
    assert partition_indices(records, "iid", 5, seed=1) != partition_indices(records, "iid", 5, seed=2)


def test_small_alpha_dirichlet_is_skewed(records):
    iid = summarize(records, partition_indices(records, "iid", 6, seed=0), 10)["mean_class_entropy_bits"]
    skewed = summarize(records, partition_indices(records, "dirichlet", 6, alpha=0.1, seed=0), 10)[
        "mean_class_entropy_bits"]
    assert iid > 3.0  # close to log2(10) = 3.32
    assert skewed < iid - 1.0


def test_pathological_gives_k_classes_and_leaves_none_out(records):
    parts = partition_indices(records, "pathological", 7, classes_per_client=3, seed=0)
    assert [len({records[i].label for i in p}) for p in parts] == [3] * 7
    with pytest.raises(ValueError, match="cannot cover"):
        partition_indices(records, "pathological", 3, classes_per_client=2, seed=0)


def test_natural_groups_by_site(records):
    parts = partition_indices(records, "natural", None)
    assert len(parts) == 4
    for p in parts:
        assert len({records[i].group for i in p}) == 1


@pytest.mark.slow
def test_partition_cli_writes_lists_summary_and_plot(records, tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"{r.path} {r.label} {r.group}\n" for r in records))
    out = tmp_path / "split"
    subprocess.run([sys.executable, "-m", "aimfl", "partition", str(listing), "--clients", "4",
                    "--scheme", "dirichlet", "--alpha", "0.5", "--seed", "3", "--out", str(out)],
                   check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clients"] == 4 and sum(c["samples"] for c in summary["per_client"]) == len(records)
    assert sum(len((out / f"client_{i:03d}.txt").read_text().splitlines()) for i in range(4)) == len(records)
    assert (out / "label_distribution.png").stat().st_size > 5000
