"""The Kinetics-400 recipes, rehearsed end to end on a world in the official layout (`aimfl make-kinetics-rehearsal`):
the same configs and scripts a user with Kinetics runs, changed only in size (a tiny random backbone, small frames,
few rounds)."""

import csv
import json
import os
import subprocess

import pytest
from helpers import aimfl, needs_nginx

from aim_core.config import load_config, to_dict
from aim_core.data.annotations import AnnotationError, read_annotations
from aim_core.data.kinetics_rehearsal import NUM_CLASSES, class_names, make_kinetics_rehearsal
from aim_core.federated.settings import APP_ROOT
from aimfl.cli import main


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics400")
    make_kinetics_rehearsal(str(root), progress=False)
    return root


def test_the_world_has_kinetics_layout_names_and_classes(kinetics):
    with open(kinetics / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
    assert len({row["label"] for row in rows}) == NUM_CLASSES == len(set(class_names()))
    assert any("(" in name for name in class_names()) and any("'" in name for name in class_names())
    for split in ("train", "val"):
        records = read_annotations(str(kinetics / f"{split}.csv"), "auto", num_classes=NUM_CLASSES)
        assert all(os.path.isfile(kinetics / split / r.path) for r in records)
    row = rows[0]
    assert (kinetics / "train" / f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}.mp4"
            ).is_file()


def test_a_kinetics_csv_missing_classes_is_refused_not_shifted(kinetics, tmp_path):
    """Classes are indexed alphabetically over the CSV's rows: a list lacking a class would shift later labels."""
    with open(kinetics / "val.csv", newline="") as f:
        lines = f.readlines()
    partial = tmp_path / "val.csv"
    partial.write_text("".join(lines[:1] + [line for line in lines[1:] if not line.startswith(class_names()[0])]))
    with pytest.raises(AnnotationError, match="only 399 of data.num_classes=400 classes appear"):
        read_annotations(str(partial), "auto", num_classes=NUM_CLASSES)


def test_simulate_refuses_more_nodes_than_partitions_in_one_line(tmp_path, capsys):
    parts = tmp_path / "parts"
    parts.mkdir()
    for k in range(3):
        (parts / f"client_{k:03d}.txt").write_text("a.mp4 0\n")
    code = main(["simulate", "--nodes", "5", "--run-config",
                 f'config="tiny_synthetic" partition-dir="{parts}" out-dir="{tmp_path / "run"}" min-nodes=3'])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--nodes 5" in err and "holds 3 partitions" in err
    assert not (tmp_path / "run").exists()


def test_the_rehearsal_config_is_the_recipe_changed_only_in_sizes():
    def leaves(node, prefix=""):
        if not isinstance(node, dict) or prefix.endswith("overrides."):
            return {prefix: node}
        return {k: v for key, child in node.items() for k, v in leaves(child, f"{prefix}{key}.").items()}

    recipe, rehearsal = (leaves(to_dict(load_config(name))) for name in ("k400_clip_vit_b16_8f", "k400_rehearsal"))
    changed = {key.rstrip(".") for key in recipe if recipe[key] != rehearsal[key]}
    assert changed == {"model.backbone.pretrained", "model.backbone.overrides", "model.image_size", "data.input_size",
                       "data.short_side", "data.num_workers"}


@pytest.mark.slow
def test_centralized_k400_recipe_trains_checkpoints_and_evaluates(kinetics, tmp_path):
    out = tmp_path / "run"
    aimfl("train", "k400_rehearsal", f"data.train_root={kinetics}/train", f"data.val_root={kinetics}/val",
          f"data.train_list={kinetics}/train.csv", f"data.val_list={kinetics}/val.csv",
          "schedule.epochs=1", "schedule.warmup_epochs=0", "schedule.batch_size=16", "--out", str(out))
    final = json.loads((out / "final.json").read_text())
    assert final["skipped_videos_train"] == 0 and final["skipped_videos_val"] == 0
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "final.safetensors").is_file()
    assert sum(1 for _ in open(out / "eval" / "per_class_accuracy.csv")) == NUM_CLASSES + 1


@pytest.mark.slow
def test_federated_k400_recipe_100_clients_pathological_split(kinetics, tmp_path):
    """simulations/kinetics400_splits.sh then simulations/kinetics400_federated.sh, as the README gives them."""
    splits = tmp_path / "splits"
    subprocess.run(["bash", os.path.join(APP_ROOT, "simulations", "kinetics400_splits.sh"),
                    str(kinetics / "train.csv"), str(splits), "0", "pathological_100x8"], check=True,
                   capture_output=True)
    summary = json.loads((splits / "pathological_100x8" / "summary.json").read_text())
    assert summary["clients"] == 100
    env = {**os.environ, "ROUNDS": "1", "WARMUP_ROUNDS": "0", "CLIENT_GPUS": "0", "CLIENT_CPUS": "1",
           "CONFIG": "k400_rehearsal"}
    out = tmp_path / "runs"
    result = subprocess.run(["bash", os.path.join(APP_ROOT, "simulations", "kinetics400_federated.sh"), str(splits),
                             str(kinetics), str(out), "pathological_100x8"], env=env, capture_output=True, text=True,
                            timeout=900)
    log_path = out / "pathological_100x8.flwr.log"
    assert result.returncode == 0, result.stderr[-2000:] + log_path.read_text()[-3000:]
    run = out / "pathological_100x8"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1]  # rounds after the first: tests/test_federated.py
    assert rounds[0]["accepted_updates"] == 10  # fraction-train 0.1 of 100
    assert rounds[-1]["central"]["skipped"] == 0 and 0 <= rounds[-1]["central"]["top1"] <= 1
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "final.safetensors").is_file()


@pytest.mark.slow
@needs_nginx
def test_deployment_kinetics_example_through_local_federation(kinetics, tmp_path):
    """docs/deployment.md's Kinetics run on 3 TLS, authenticated SuperNodes, with its config at rehearsal size
    (configs/k400_rehearsal.yaml: a site takes a config name, no shapes, from the run); the tiny random backbone is
    written once and staged on every site."""
    with open(kinetics / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    one_per_class = tmp_path / "train_one_per_class.csv"  # every class must appear; half the clips to train
    with open(one_per_class, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({row["label"]: row for row in rows}.values())
    out = tmp_path / "local"
    result = aimfl("local-federation", "k400_rehearsal", "--out", str(out),
                   f"data.train_root={kinetics}/train", f"data.train_list={one_per_class}",
                   f"data.val_root={kinetics}/val", f"data.val_list={kinetics}/val.csv", "local_federation.scheme=iid",
                   "local_federation.rounds=1", "schedule.batch_size=8", "data.test_clips=1", check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "local_federation.json").read_text())
    assert summary["rounds"] == 1 and summary["tls_and_node_auth"] and summary["processes_stopped"] == 5
    run = out / "run"
    rounds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rounds[-1]["accepted_updates"] == 3
    assert rounds[-1]["central"]["skipped"] == 0 and 0 <= rounds[-1]["central"]["top1"] <= 1
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "final.safetensors").is_file()
    staged = [out / "sites" / f"site{i}" / "backbone.pth" for i in range(3)]
    assert all(path.read_bytes() == (out / "backbone.pth").read_bytes() for path in staged)
    assert sum(len((out / "sites" / f"site{i}" / "train.txt").read_text().splitlines()) for i in range(3)) == 400


def test_local_federation_takes_no_synthetic_folder_for_another_world(capsys, tmp_path):
    assert main(["local-federation", "k400_clip_vit_b16_8f", "--data", str(tmp_path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--data" in err and "data.train_list" in err
