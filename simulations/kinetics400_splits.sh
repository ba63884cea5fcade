#!/usr/bin/env bash
# Writes the federated Kinetics-400 splits of simulations/README.md.
# Usage: simulations/kinetics400_splits.sh /path/to/kinetics400/train.csv OUT_DIR [SEED]
set -euo pipefail
csv=${1:?path to the official Kinetics-400 train.csv}
out=${2:?output folder}
seed=${3:-0}

aimfl partition "$csv" --scheme iid --clients 100 --seed "$seed" --out "$out/iid_100"
for alpha in 1.0 0.5 0.1; do
  aimfl partition "$csv" --scheme dirichlet --alpha "$alpha" --clients 100 --seed "$seed" --out "$out/dirichlet_${alpha}_100"
done
aimfl partition "$csv" --scheme pathological --clients 100 --classes-per-client 8 --seed "$seed" --out "$out/pathological_100x8"
