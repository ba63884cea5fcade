"""The `aimfl` command line: thin wrappers over aim_core."""

from __future__ import annotations

import argparse
import json
import os
import sys

from aim_core.annotations import AnnotationError
from aim_core.backbones import PretrainedWeightsError
from aim_core.config import ConfigError, load_config
from aim_core.partition import SCHEMES
from aim_core.trainable import TrainableStateError


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


def cmd_train(args: argparse.Namespace) -> None:
    from aim_core.train import run

    final = run(load_config(args.config, args.overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(final, indent=2))


def load_checkpoint_config(checkpoint: str, config: str | None, overrides: list[str]):
    """The experiment config: the one named, or the one stored in the checkpoint's metadata."""
    from omegaconf import OmegaConf

    from aim_core.trainable import read_trainable

    if config:
        return load_config(config, overrides)
    _, metadata = read_trainable(checkpoint)
    cfg = OmegaConf.create(json.loads(metadata["config"]))
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides)) if overrides else cfg


def build_for_inference(cfg, checkpoint: str):
    import torch

    from aim_core.config import to_dict
    from aim_core.model import build_model
    from aim_core.trainable import load_trainable

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg.model)
    metadata = load_trainable(model, checkpoint, to_dict(cfg))
    return model.to(device).eval(), device, metadata


def cmd_eval(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader

    from aim_core.annotations import class_names_of
    from aim_core.evaluation import evaluate, order_pairs_of, report, write_report_files
    from aim_core.training import resolve_precision
    from aim_core.video_data import build_dataset

    cfg = load_config(args.config, args.overrides)
    model, device, _ = build_for_inference(cfg, args.checkpoint)
    loader = DataLoader(build_dataset(cfg, "val"), batch_size=args.batch_size, num_workers=cfg.data.num_workers)
    result = evaluate(model, loader, device, cfg.data.max_views_per_forward,
                      resolve_precision(cfg.schedule.precision, device), progress=True)
    summary = {**report(result["probs"], result["labels"], order_pairs_of(cfg.data.root)),
               "skipped_videos": result["skipped"], "checkpoint": os.path.abspath(args.checkpoint)}
    names = class_names_of(cfg.data)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    write_report_files(summary, names, out)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("confusion", "per_class_accuracy")}, indent=2))
    print(f"per-class accuracy and confusion matrix in {out}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    from aim_core.annotations import VideoRecord, class_names_of
    from aim_core.evaluation import average_view_probabilities
    from aim_core.training import resolve_precision
    from aim_core.video_data import VideoDataset

    cfg = load_checkpoint_config(args.checkpoint, args.config, args.overrides)
    model, device, metadata = build_for_inference(cfg, args.checkpoint)
    names = json.loads(metadata["class_names"]) if "class_names" in metadata else class_names_of(cfg.data)
    video = os.path.abspath(args.video)
    dataset = VideoDataset([VideoRecord(video, 0)], "", cfg.data, cfg.model.backbone.mean, cfg.model.backbone.std,
                           train=False)
    try:
        item = dataset[0]
    except RuntimeError as err:  # the only video could not be read
        raise SystemExit(f"aimfl: cannot read {video}") from err
    probs = average_view_probabilities(model, item["video"][None].to(device), cfg.data.max_views_per_forward,
                                       resolve_precision(cfg.schedule.precision, device))[0]
    top = probs.topk(min(args.top, len(names)))
    for p, k in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{p:.4f}  {names[k]}")


def cmd_pretrain_image(args: argparse.Namespace) -> None:
    from aim_core.image_pretrain import pretrain_image_model

    cfg = load_config(args.config, args.overrides)
    out = args.out or os.path.expanduser(cfg.model.backbone.checkpoint)
    if os.path.isfile(out) and not args.force:
        print(f"{out} exists (cached); --force trains it again")
        return
    card = pretrain_image_model(cfg, out)
    print(json.dumps({"checkpoint": out, "train_seconds": card["train_seconds"], "val_loss": card["val_loss"],
                      "val_accuracy": card["val_accuracy"]}, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from aim_core.demo import run_demo

    run_demo(args.out, args.data, args.config, tuple(args.overrides))


def cmd_local_federation(args: argparse.Namespace) -> None:
    from aim_core.local_federation import run_local_federation

    run_local_federation(args.out, args.data, args.config, tuple(args.overrides), insecure=args.insecure)


def cmd_make_certs(args: argparse.Namespace) -> None:
    from aim_core.credentials import make_tls_certificates

    paths = make_tls_certificates(args.out, args.host, args.days)
    print(json.dumps({"written": paths, "hosts": args.host, "give_to_sites": paths["ca.crt"],
                      "keep_private": [paths["ca.key"], paths["server.key"]]}, indent=2))


def cmd_make_site_key(args: argparse.Namespace) -> None:
    from aim_core.credentials import make_site_key

    private, public = make_site_key(args.path)
    print(json.dumps({"private_key": private, "public_key": public,
                      "next": f"give {public} to the operator (flwr supernode register); {private} stays here"}, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimfl", description="AIM adapters for video, trained centrally or federated")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the main job: synthetic world, embedded image model, space-only vs "
                                             "centralized vs federated AIM (minutes on a CPU)")
    demo.add_argument("--out", default="outputs/demo", help="report folder")
    demo.add_argument("--data", default="data/synthetic", help="synthetic world folder (made if missing)")
    demo.add_argument("--config", default="demo")
    demo.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. demo.clients=3)")
    demo.set_defaults(run=cmd_demo)

    local = commands.add_parser("local-federation", help="a TLS SuperLink and one authenticated SuperNode per site on "
                                                          "127.0.0.1: a real Flower deployment, end to end")
    local.add_argument("--out", default="outputs/local-federation", help="credentials, site folders, logs, run")
    local.add_argument("--data", default="data/synthetic-3sites", help="synthetic world with one site per SuperNode "
                                                                       "(made if missing)")
    local.add_argument("--config", default="demo")
    local.add_argument("--insecure", action="store_true", help="no TLS (loudly warned): only to debug on one machine")
    local.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. local_federation.rounds=4)")
    local.set_defaults(run=cmd_local_federation)

    certs = commands.add_parser("make-certs", help="a CA and the SuperLink's TLS certificate for the given hosts")
    certs.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    certs.add_argument("--host", action="append", required=True,
                       help="a name or IP address the SuperNodes dial (repeat for several)")
    certs.add_argument("--days", type=int, default=365, help="validity")
    certs.set_defaults(run=cmd_make_certs)

    site_key = commands.add_parser("make-site-key", help="a site's ECDSA P-384 key pair for SuperNode authentication "
                                                          "(as ssh-keygen -t ecdsa -b 384)")
    site_key.add_argument("path", help="private key file; the public key is written to PATH.pub")
    site_key.set_defaults(run=cmd_make_site_key)

    info = commands.add_parser("info", help="parameter counts and multiply-adds of a config, as JSON (offline)")
    info.add_argument("config", help="a config file, or a name in configs/ (e.g. k400_clip_vit_b16_8f)")
    info.add_argument("overrides", nargs="*", help="key=value config overrides")
    info.set_defaults(run=cmd_info)

    train = commands.add_parser("train", help="train centrally (one process, or DDP under torchrun)")
    train.add_argument("config", help="a config file or a name in configs/ (e.g. synthetic)")
    train.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. model.variant=space_only)")
    train.set_defaults(run=cmd_train)

    ev = commands.add_parser("eval", help="multi-view evaluation of a checkpoint on the config's val list")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--checkpoint", required=True, help="a .safetensors trainable-state file")
    ev.add_argument("--batch-size", type=int, default=4, help="videos per batch (each with all its views)")
    ev.add_argument("--out", help="report folder (default: eval/ beside the checkpoint)")
    ev.set_defaults(run=cmd_eval)

    pred = commands.add_parser("predict", help="top classes of one video")
    pred.add_argument("video")
    pred.add_argument("--checkpoint", required=True, help="a .safetensors trainable-state file")
    pred.add_argument("--config", help="default: the config stored in the checkpoint")
    pred.add_argument("--top", type=int, default=5)
    pred.add_argument("overrides", nargs="*", help="key=value config overrides")
    pred.set_defaults(run=cmd_predict)

    pre = commands.add_parser("pretrain-image", help="pre-train the embedded image model on synthetic frames (cached)")
    pre.add_argument("config", nargs="?", default="synthetic")
    pre.add_argument("overrides", nargs="*")
    pre.add_argument("--out", help="default: the config's model.backbone.checkpoint")
    pre.add_argument("--force", action="store_true", help="train again even if the file exists")
    pre.set_defaults(run=cmd_pretrain_image)

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
    except (PretrainedWeightsError, TrainableStateError, FileExistsError) as err:
        print(f"aimfl: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
