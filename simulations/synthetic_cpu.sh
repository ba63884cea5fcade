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
# checked first, in its own FLWR_HOME, its SuperLink stopped afterwards, non-zero when the ServerApp failed
aimfl simulate --nodes 4 --client-cpus 1 --run-config "config=\"synthetic\" \
overrides=\"data.root=$data data.num_workers=0\" strategy=\"$strategy\" partition-dir=\"$out/partitions\" \
out-dir=\"$out\" num-server-rounds=30 min-nodes=4 central-eval-every=5"
