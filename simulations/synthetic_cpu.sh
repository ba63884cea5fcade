#!/usr/bin/env bash
# Federated AIM on the synthetic world, on a CPU: 4 clients with a Dirichlet(0.5) split, FedAvg.
# Usage: simulations/synthetic_cpu.sh [OUT_DIR] [STRATEGY]   (STRATEGY: fedavg, fedprox, fedadam, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-outputs/federated_synthetic}")
strategy=${2:-fedavg}
data=$(realpath -m data/synthetic)
[ -f "$data/synthetic.json" ] || aimfl make-synthetic "$data"
aimfl pretrain-image synthetic    # cached in ~/.cache/aimfl after the first time
aimfl partition "$data/train.txt" --scheme dirichlet --alpha 0.5 --clients 4 --min-size 16 --out "$out/partitions"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
flwr run . --stream \
  --run-config "config=\"synthetic\" overrides=\"data.root=$data data.num_workers=0\" strategy=\"$strategy\" \
partition-dir=\"$out/partitions\" out-dir=\"$out\" num-server-rounds=30 min-nodes=4 central-eval-every=5" \
  --federation-config "num-supernodes=4 client-resources-num-cpus=1"
# flwr run exits 0 even when the ServerApp failed: a finished run is one that wrote final.json
[ -f "$out/final.json" ] || { echo "the run failed (no $out/final.json): see its log above" >&2; exit 1; }
