#!/usr/bin/env bash
# Writes the federated Kinetics-400 splits of simulations/README.md.
# Usage: simulations/kinetics400_splits.sh /path/to/kinetics400/train.csv OUT_DIR [SEED] [SPLIT...]
#   SPLIT: iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8 (default: all)
set -euo pipefail
csv=${1:?path to the official Kinetics-400 train.csv}
out=${2:?output folder}
seed=${3:-0}
shift $(( $# < 3 ? $# : 3 ))
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(iid_100 dirichlet_1.0_100 dirichlet_0.5_100 dirichlet_0.1_100 pathological_100x8)
for name in "${names[@]}"; do
  case "$name" in
    iid_100) aimfl partition "$csv" --scheme iid --clients 100 --seed "$seed" --out "$out/$name" ;;
    dirichlet_*_100) alpha=${name#dirichlet_}; alpha=${alpha%_100}
      aimfl partition "$csv" --scheme dirichlet --alpha "$alpha" --clients 100 --seed "$seed" --out "$out/$name" ;;
    pathological_100x8)
      aimfl partition "$csv" --scheme pathological --clients 100 --classes-per-client 8 --seed "$seed" --out "$out/$name" ;;
    *) echo "unknown split $name (iid_100, dirichlet_A_100, pathological_100x8)" >&2; exit 2 ;;
  esac
done
