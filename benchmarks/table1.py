"""The paper's Table 1 on the synthetic world: which adaptation buys what.

Trains and evaluates, with the same frozen embedded image model and schedule, the frozen
space-only linear probe, +spatial, +temporal, full AIM (+joint) and full fine-tuning of the
same network, then prints a Markdown table (overall and order-only-pair top-1, trainable
parameters, wall time) and saves it as JSON. `--fractions` instead trains AIM on 10/25/50/100%
of the training list (the data-efficiency study, Fig. 3).

    aimfl make-synthetic data/synthetic && aimfl pretrain-image
    python benchmarks/table1.py [--out outputs/table1] [--set key=value ...]
    python benchmarks/table1.py --fractions 0.1 0.25 0.5 1.0
"""

from __future__ import annotations

import argparse
import json
import os

from aim_core.config import load_config
from aimfl.train import run

VARIANTS = ["space_only", "spatial", "temporal", "aim", "full_finetune"]
LABELS = {"space_only": "frozen space-only (linear probe)", "spatial": "+ spatial adaptation",
          "temporal": "+ temporal adaptation", "aim": "+ joint adaptation (AIM)",
          "full_finetune": "full fine-tuning (same network)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="synthetic")
    parser.add_argument("--out", default="outputs/table1")
    parser.add_argument("--variants", nargs="*", default=VARIANTS)
    parser.add_argument("--fractions", nargs="*", type=float, help="data-efficiency study with AIM instead")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="config overrides for every run")
    args = parser.parse_args()

    runs = ([(f"fraction_{f:g}", ["model.variant=aim", f"data.fraction={f}"]) for f in args.fractions]
            if args.fractions else [(v, [f"model.variant={v}"]) for v in args.variants])
    rows = []
    for name, overrides in runs:
        cfg = load_config(args.config, [*args.overrides, *overrides, f"output_dir={args.out}/{name}"])
        final = run(cfg)
        rows.append({"run": name, **{k: final.get(k) for k in (
            "val_top1", "val_order_top1", "val_appearance_top1", "trainable_params", "total_params", "wall_seconds")}})
        print(json.dumps(rows[-1]), flush=True)

    lines = ["| run | top-1 | order-only pairs top-1 | appearance classes top-1 | trainable | wall time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        label = LABELS.get(r["run"], r["run"])
        lines.append(f"| {label} | {r['val_top1']:.1%} | {r['val_order_top1']:.1%} | {r['val_appearance_top1']:.1%} "
                     f"| {r['trainable_params']:,} of {r['total_params']:,} | {r['wall_seconds']:.0f} s |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "table.json"), "w") as f:
        json.dump({"config": args.config, "overrides": args.overrides, "rows": rows, "markdown": table}, f, indent=2)


if __name__ == "__main__":
    main()
