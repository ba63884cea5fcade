#!/usr/bin/env bash
# Federated AIM (CLIP ViT-B/16, 8 frames) on the Kinetics-400 splits of kinetics400_splits.sh:
# 100 simulated clients, 10 sampled per round, on one machine's GPUs.
# Usage: simulations/kinetics400_federated.sh SPLITS_DIR K400_ROOT OUT_DIR [SPLIT...]
#   SPLITS_DIR: the output of kinetics400_splits.sh; K400_ROOT: the folder train.csv's videos are in
#   SPLIT: iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8 (default: all)
# GPU share per client: client-resources-num-gpus=0.25 runs 4 clients at a time on each GPU (AIM
# ViT-B/16 at batch 8 with bf16 needs about 10 GB each; raise it if clients run out of memory).
set -euo pipefail
splits=$(realpath "${1:?splits folder}")
root=$(realpath "${2:?Kinetics-400 video root}")
out=$(realpath -m "${3:?output folder}")
shift 3
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8)
cd "$(dirname "$0")/.."
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # use this environment's torch, no per-run uv sync
for name in "${names[@]}"; do
  flwr run . --stream \
    --run-config "config=\"k400_clip_vit_b16_8f\" overrides=\"data.root=$root data.num_workers=4\" \
partition-dir=\"$splits/$name\" out-dir=\"$out/$name\" num-server-rounds=100 local-epochs=1 lr=3e-4 \
warmup-rounds=5 batch-size=8 fraction-train=0.1 fraction-evaluate=0.0 min-nodes=10 client-eval-every=0 \
local-val-fraction=0.0 central-eval-every=10 update-codec=\"fp16\" resume=true" \
    --federation-config "num-supernodes=100 client-resources-num-cpus=4 client-resources-num-gpus=0.25"
  # flwr run exits 0 even when the ServerApp failed: a finished run is one that wrote final.json
  [ -f "$out/$name/final.json" ] || { echo "run $name failed (no $out/$name/final.json): see its log above" >&2; exit 1; }
done
