#!/usr/bin/env bash
# Federated AIM (CLIP ViT-B/16, 8 frames) on the Kinetics-400 splits of kinetics400_splits.sh:
# 100 simulated clients, 10 sampled per round, on one machine's GPUs.
# Usage: simulations/kinetics400_federated.sh SPLITS_DIR K400_ROOT OUT_DIR [SPLIT...]
#   SPLITS_DIR: the output of kinetics400_splits.sh
#   K400_ROOT: the official layout, train/ and val/ video folders beside train.csv and val.csv (central
#     evaluation on val.csv every 10 rounds; without it the rounds are checkpointed, not evaluated)
#   SPLIT: iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8 (default: all)
# GPU share per client: CLIENT_GPUS=0.25 runs 4 clients at a time on each GPU (AIM ViT-B/16 at batch 8 with
# bf16 needs about 10 GB each; raise it if clients run out of memory).
# Rehearsal sizes (tests/test_kinetics_rehearsal.py): ROUNDS, WARMUP_ROUNDS, CLIENT_GPUS, CLIENT_CPUS, CONFIG
# (k400_rehearsal: the same recipe with a tiny backbone on small frames) and OVERRIDES, appended to the config
# overrides.
set -euo pipefail
splits=$(realpath "${1:?splits folder}")
root=$(realpath "${2:?Kinetics-400 root with train/ and val/}")
out=$(realpath -m "${3:?output folder}")
shift 3
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8)
val=""
[ -f "$root/val.csv" ] && val="data.val_list=$root/val.csv"
for name in "${names[@]}"; do
  # aimfl simulate checks the run config first, runs in its own FLWR_HOME with this environment's torch,
  # stops its SuperLink afterwards and exits non-zero when the ServerApp failed
  aimfl simulate --nodes 100 --client-cpus "${CLIENT_CPUS:-4}" --client-gpus "${CLIENT_GPUS:-0.25}" \
    --run-config "config=\"${CONFIG:-k400_clip_vit_b16_8f}\" \
overrides=\"data.train_root=$root/train data.val_root=$root/val $val data.num_workers=4 ${OVERRIDES:-}\" \
partition-dir=\"$splits/$name\" out-dir=\"$out/$name\" num-server-rounds=${ROUNDS:-100} local-epochs=1 lr=3e-4 \
warmup-rounds=${WARMUP_ROUNDS:-5} batch-size=8 fraction-train=0.1 fraction-evaluate=0.0 min-nodes=10 \
client-eval-every=0 local-val-fraction=0.0 central-eval-every=10 update-codec=\"fp16\" resume=true"
done
