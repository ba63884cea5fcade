"""The `aimfl` command line: thin wrappers over aim_core."""

from __future__ import annotations

import argparse
import json
import os
import sys

from aim_core.annotations import AnnotationError
from aim_core.config import ConfigError, load_config
from aim_core.partition import SCHEMES


def cmd_info(args: argparse.Namespace) -> None:
    from aim_core.counting import model_info

    print(json.dumps(model_info(load_config(args.config, args.overrides)), indent=2))


def cmd_make_synthetic(args: argparse.Namespace) -> None:
    from aim_core.synthetic import make_synthetic

    summary = make_synthetic(args.out, seed=args.seed, train_per_class=args.train_per_class,
                             val_per_class=args.val_per_class, size=args.size, frames=args.frames, sites=args.sites)
    print(json.dumps(summary))


def cmd_partition(args: argparse.Namespace) -> None:
    from aim_core.annotations import read_annotations, read_class_names
    from aim_core.partition import write_partitions

    records = read_annotations(args.list, args.format, args.class_names)
    names = read_class_names(args.class_names) if args.class_names else None
    summary = write_partitions(records, args.out, args.scheme, args.clients, args.alpha, args.classes_per_client,
                               args.seed, num_classes=len(names) if names else None, class_names=names,
                               source=os.path.abspath(args.list), min_size=args.min_size)
    sizes = [c["samples"] for c in summary["per_client"]]
    print(json.dumps({"out": args.out, "clients": summary["clients"], "samples_per_client": sizes,
                      "mean_class_entropy_bits": round(summary["mean_class_entropy_bits"], 3)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimfl", description="AIM adapters for video, trained centrally or federated")
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="parameter counts and multiply-adds of a config, as JSON (offline)")
    info.add_argument("config", help="a config file, or a name in configs/ (e.g. k400_clip_vit_b16_8f)")
    info.add_argument("overrides", nargs="*", help="key=value config overrides")
    info.set_defaults(run=cmd_info)

    synth = commands.add_parser("make-synthetic", help="write the synthetic video world (H.264 clips and lists)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-per-class", type=int, default=24)
    synth.add_argument("--val-per-class", type=int, default=8)
    synth.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    synth.add_argument("--frames", type=int, default=16, help="frames per clip")
    synth.add_argument("--sites", type=int, default=4, help="sites (backgrounds) for natural federated splits")
    synth.set_defaults(run=cmd_make_synthetic)

    part = commands.add_parser("partition", help="split a video list into federated clients")
    part.add_argument("list", help="annotation file (path label [group] list, Kinetics CSV, SSv2/Diving-48 JSON)")
    part.add_argument("--clients", type=int, help="number of clients (natural: defaults to the number of groups)")
    part.add_argument("--scheme", choices=SCHEMES, default="iid")
    part.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skewed)")
    part.add_argument("--classes-per-client", type=int, default=2, help="pathological: classes per client")
    part.add_argument("--min-size", type=int, default=1, help="Dirichlet: resample until every client has this many")
    part.add_argument("--seed", type=int, default=0)
    part.add_argument("--format", default="auto", help="annotation format (default: from the file)")
    part.add_argument("--class-names", help="classes.txt or SSv2 labels.json")
    part.add_argument("--out", required=True, help="output folder")
    part.set_defaults(run=cmd_partition)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ConfigError as err:
        print(f"aimfl: config error: {err}", file=sys.stderr)
        return 2
    except AnnotationError as err:
        print(f"aimfl: annotation error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
