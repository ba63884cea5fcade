"""The `aimfl` command line: a thin layer over the `aimfl` API and its recipes."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version

from aim_core.config import ConfigError, config_from_dict, list_configs, load_config
from aim_core.data.annotations import AnnotationError
from aim_core.data.partition import SCHEMES, PartitionError
from aim_core.data.video import VideoReadError
from aim_core.engine.checkpoint import CheckpointError, stored_config
from aim_core.engine.run_dir import RunDirError
from aim_core.model.backbones import PretrainedWeightsError
from aim_core.model.trainable import TrainableStateError


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """`--help` shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" not in text and not hidden and action.option_strings:
            text += " (default: %(default)s)"
        return text


def installed_version() -> str:
    try:
        return version("aimfl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def cmd_configs(args: argparse.Namespace) -> None:
    for name, summary in list_configs():
        print(f"{name:34s} {summary}")


def cmd_print_config(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(load_config(args.config, args.overrides), resolve=True), end="")


def cmd_info(args: argparse.Namespace) -> None:
    from aim_core.model.counting import model_info

    print(json.dumps(model_info(load_config(args.config, args.overrides)), indent=2))


def cmd_make_synthetic(args: argparse.Namespace) -> None:
    from aim_core.data.synthetic import make_synthetic

    summary = make_synthetic(args.out, seed=args.seed, train_per_class=args.train_per_class,
                             val_per_class=args.val_per_class, size=args.size, frames=args.frames, sites=args.sites)
    print(json.dumps(summary))


def cmd_make_kinetics_rehearsal(args: argparse.Namespace) -> None:
    from aim_core.data.kinetics_rehearsal import make_kinetics_rehearsal

    print(json.dumps(make_kinetics_rehearsal(args.out, args.train_per_class, args.val_per_class, args.seed)))


def cmd_partition(args: argparse.Namespace) -> None:
    from aim_core.data.annotations import read_annotations, read_class_names
    from aim_core.data.partition import write_partitions

    records = read_annotations(args.list, args.format, args.class_names)
    names = read_class_names(args.class_names) if args.class_names else None
    summary = write_partitions(records, args.out, args.scheme, args.clients, args.alpha, args.classes_per_client,
                               args.seed, num_classes=len(names) if names else None, class_names=names,
                               source=os.path.abspath(args.list), min_size=args.min_size)
    sizes = [c["samples"] for c in summary["per_client"]]
    print(json.dumps({"out": args.out, "clients": summary["clients"], "samples_per_client": sizes,
                      "mean_class_entropy_bits": round(summary["mean_class_entropy_bits"], 3)}))


def cmd_train(args: argparse.Namespace) -> None:
    import aimfl

    overrides = list(args.overrides)
    if args.out:
        if any(item.startswith("output_dir=") for item in overrides):
            raise ConfigError(f"--out {args.out} and an output_dir= override both set the run folder; give one")
        overrides.append(f"output_dir={args.out}")
    final = aimfl.train(load_config(args.config, overrides))
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(final, indent=2))


def model_with_adapters(cfg, checkpoint: str):
    """The model of `cfg` holding the trainable state of `checkpoint`, and the file's metadata."""
    import aimfl

    model = aimfl.build_model(cfg)
    return model, aimfl.load_adapters(model, checkpoint, cfg)


def cmd_eval(args: argparse.Namespace) -> None:
    import aimfl
    from aim_core.data.annotations import class_names_of
    from aim_core.engine.evaluation import write_report_files

    cfg = load_config(args.config, args.overrides)
    model, _ = model_with_adapters(cfg, args.checkpoint)
    result = aimfl.evaluate(model, cfg, progress=True)
    summary = {**result, "skipped_videos": result.pop("skipped"), "checkpoint": os.path.abspath(args.checkpoint)}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
    write_report_files(summary, class_names_of(cfg.data), out)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("confusion", "per_class_accuracy")}, indent=2))
    print(f"per-class accuracy and confusion matrix in {out}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    import aimfl

    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:  # the config the checkpoint was trained with
        cfg = config_from_dict(stored_config(args.checkpoint), args.overrides,
                               f"the config stored in {args.checkpoint}")
    model, metadata = model_with_adapters(cfg, args.checkpoint)
    # class names travel in the file's metadata; a path in a checkpoint's config is never followed
    names = json.loads(metadata.get("class_names", "null")) or [str(k) for k in range(cfg.data.num_classes)]
    probs = aimfl.predict(model, cfg, args.video)
    top = probs.topk(min(args.top, len(names)))
    for p, k in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{p:.4f}  {names[k]}")


def cmd_pretrain_image(args: argparse.Namespace) -> None:
    from aimfl.pretrain_image import ensure_image_model

    cfg = load_config(args.config, args.overrides)
    if not (args.out or cfg.model.backbone.checkpoint):
        raise ConfigError(f"model.backbone.checkpoint is not set in {args.config}: give --out, the file to write")
    out = args.out or os.path.expanduser(cfg.model.backbone.checkpoint)
    card, trained = ensure_image_model(cfg, out, force=args.force)
    if not trained:
        print(f"{out} is cached (made by the same recipe); --force trains it again", file=sys.stderr)
    print(json.dumps({"checkpoint": out, "train_seconds": card["train_seconds"], "val_loss": card["val_loss"],
                      "val_accuracy": card["val_accuracy"]}, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from aimfl.demo import run_demo

    run_demo(args.out, args.data, args.config, tuple(args.overrides))


def cmd_simulate(args: argparse.Namespace) -> int:
    from flwr.common.config import parse_config_args

    from aimfl.simulation import simulate

    code = simulate(parse_config_args([args.run_config]), args.nodes, args.log, args.client_cpus, args.client_gpus)
    if code:
        print(f"aimfl: the federated run failed (exit status {code}); its log says why", file=sys.stderr)
    return code


def cmd_local_federation(args: argparse.Namespace) -> None:
    from aimfl.local_federation import run_local_federation

    run_local_federation(args.out, args.data, args.config, tuple(args.overrides), insecure=args.insecure)


def cmd_make_certs(args: argparse.Namespace) -> None:
    from aimfl.credentials import make_tls_certificates

    paths = make_tls_certificates(args.out, args.host, args.days)
    print(json.dumps({"written": paths, "hosts": args.host, "give_to_sites": paths["ca.crt"],
                      "keep_private": [paths["ca.key"], paths["server.key"]]}, indent=2))


def cmd_make_proxy_config(args: argparse.Namespace) -> None:
    from aimfl.deployment import fleet_proxy_config

    workdir = os.path.abspath(args.workdir)
    tls = None if args.insecure else {role: os.path.abspath(os.path.join(args.tls, name)) for role, name in
                                      (("ca", "ca.crt"), ("cert", "server.pem"), ("key", "server.key"))}
    missing = [path for path in (tls or {}).values() if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"--tls {args.tls}: {', '.join(missing)} not found; make them with aimfl make-certs")
    os.makedirs(workdir, exist_ok=True)
    out = os.path.join(workdir, "nginx.conf")
    with open(out, "w") as f:
        f.write(fleet_proxy_config(args.listen, args.superlink_port, workdir, tls))
    print(json.dumps({"written": out, "start": f"nginx -p {workdir} -c {out}", "sites_dial": args.listen,
                      "superlink": f"127.0.0.1:{args.superlink_port} (flower-superlink --host 127.0.0.1 "
                                   f"--port {args.superlink_port})"}, indent=2))


def cmd_make_site_key(args: argparse.Namespace) -> None:
    from aimfl.credentials import make_site_key

    private, public = make_site_key(args.path)
    print(json.dumps({"private_key": private, "public_key": public,
                      "next": f"give {public} to the operator (flwr supernode register); {private} stays here"},
                     indent=2))


def optional_config(parser: argparse.ArgumentParser, default: str | None, help: str) -> None:
    """The config as the first positional, as in every command, here with a default: a first positional that is a
    key=value override is one (`aimfl demo demo.clients=3`), see `main`."""
    parser.add_argument("config", nargs="?", default=default, help=help + (f" (default: {default})" if default else ""))
    parser.set_defaults(config_default=default)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aimfl", description="AIM adapters for video, trained centrally or federated")
    parser.add_argument("--version", action="version", version=f"aimfl {installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(subparsers.add_parser, formatter_class=DefaultsHelpFormatter)  # defaults in --help

    demo = command("demo", help="the main job: synthetic world, embedded image model, space-only vs "
                                             "centralized vs federated AIM (minutes on a CPU)")
    demo.add_argument("--out", default="outputs/demo", help="report folder")
    demo.add_argument("--data", default="data/synthetic", help="synthetic world folder (made if missing)")
    optional_config(demo, "demo", "a config file or a name in configs/")
    demo.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. demo.clients=3)")
    demo.set_defaults(run=cmd_demo)

    local = command("local-federation", help="a TLS SuperLink and one authenticated SuperNode per site on "
                                                          "127.0.0.1: a real Flower deployment, end to end")
    optional_config(local, "demo", "a config file or a name in configs/ (a config of another world than the "
                    "synthetic one trains on the videos it names: data.train_list=... ...)")
    local.add_argument("--out", default="outputs/local-federation", help="credentials, site folders, logs, run")
    local.add_argument("--data", help="the synthetic world, one site per SuperNode (made if missing; default: "
                                      "data/synthetic-3sites); only for the synthetic world's configs")
    local.add_argument("--insecure", action="store_true", help="no TLS (loudly warned): only to debug on one machine")
    local.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. local_federation.rounds=4)")
    local.set_defaults(run=cmd_local_federation)

    sim = command("simulate", help="a federated run on Flower's simulation engine: checked first, in its "
                                                "own FLWR_HOME, its SuperLink stopped after it, non-zero on failure")
    sim.add_argument("--nodes", type=int, required=True, help="simulated SuperNodes, one per partition")
    sim.add_argument("--run-config", required=True, help="'key=value ...' as flwr run takes it (keys: pyproject.toml "
                                                          "[tool.flwr.app.config])")
    sim.add_argument("--client-cpus", type=int, default=1, help="CPUs per client")
    sim.add_argument("--client-gpus", type=float, default=0.0, help="GPU share per client (0.25: 4 per GPU)")
    sim.add_argument("--log", help="the run's log (default: OUT-DIR.flwr.log)")
    sim.set_defaults(run=cmd_simulate)

    certs = command("make-certs", help="a CA and the SuperLink's TLS certificate for the given hosts")
    certs.add_argument("--out", required=True, help="folder for ca.crt, ca.key, server.pem, server.key")
    certs.add_argument("--host", action="append", required=True,
                       help="a name or IP address the SuperNodes dial (repeat for several)")
    certs.add_argument("--days", type=int, default=365, help="validity")
    certs.set_defaults(run=cmd_make_certs)

    proxy = command("make-proxy-config", help="the nginx configuration of the sites' address: the "
                                                           "Fleet API only, so that only the operator starts runs")
    proxy.add_argument("--listen", default="0.0.0.0:9092", help="the address the sites dial (HOST:PORT)")
    proxy.add_argument("--superlink-port", type=int, default=9093, help="the SuperLink's port on 127.0.0.1")
    proxy.add_argument("--tls", default="pki", help="the folder of aimfl make-certs (ca.crt, server.pem, server.key)")
    proxy.add_argument("--workdir", required=True, help="nginx's folder: nginx.conf, pid, logs, temporary files")
    proxy.add_argument("--insecure", action="store_true", help="plain HTTP (no TLS): only to debug on one machine")
    proxy.set_defaults(run=cmd_make_proxy_config)

    site_key = command("make-site-key", help="a site's ECDSA P-384 key pair for SuperNode authentication "
                                                          "(as ssh-keygen -t ecdsa -b 384)")
    site_key.add_argument("path", help="private key file; the public key is written to PATH.pub")
    site_key.set_defaults(run=cmd_make_site_key)

    configs = command("configs", help="the configs shipped with aimfl, each with its first comment line")
    configs.set_defaults(run=cmd_configs)

    show = command("print-config", help="a config as it resolves, with every default and override")
    show.add_argument("config", help="a config file, or a name in configs/ (see aimfl configs)")
    show.add_argument("overrides", nargs="*", help="key=value config overrides")
    show.set_defaults(run=cmd_print_config)

    info = command("info", help="parameter counts and multiply-adds of a config, as JSON (offline)")
    info.add_argument("config", help="a config file, or a name in configs/ (e.g. k400_clip_vit_b16_8f)")
    info.add_argument("overrides", nargs="*", help="key=value config overrides")
    info.set_defaults(run=cmd_info)

    train = command("train", help="train centrally (one process, or DDP under torchrun)")
    train.add_argument("config", help="a config file or a name in configs/ (e.g. synthetic)")
    train.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. model.variant=space_only)")
    train.add_argument("--out", help="run folder (default: the config's output_dir)")
    train.set_defaults(run=cmd_train)

    ev = command("eval", help="multi-view evaluation of a checkpoint on the config's val list")
    ev.add_argument("config", help="a config file or a name in configs/")
    ev.add_argument("overrides", nargs="*", help="key=value config overrides")
    ev.add_argument("--checkpoint", required=True, help="a .safetensors trainable-state file")
    ev.add_argument("--out", help="report folder (default: eval/ beside the checkpoint)")
    ev.set_defaults(run=cmd_eval)

    pred = command("predict", help="top classes of one video")
    pred.add_argument("video", help="a video file")
    optional_config(pred, None, "a config file or a name in configs/ (default: the config stored in the checkpoint)")
    pred.add_argument("--checkpoint", required=True, help="a .safetensors trainable-state file")
    pred.add_argument("--top", type=int, default=5, help="classes to print")
    pred.add_argument("overrides", nargs="*", help="key=value config overrides")
    pred.set_defaults(run=cmd_predict)

    pre = command("pretrain-image", help="pre-train the embedded image model on procedural images "
                                                     "(cached by recipe)")
    optional_config(pre, "synthetic", "a config file or a name in configs/")
    pre.add_argument("overrides", nargs="*", help="key=value config overrides")
    pre.add_argument("--out", help="default: the config's model.backbone.checkpoint")
    pre.add_argument("--force", action="store_true", help="train again even if the file exists")
    pre.set_defaults(run=cmd_pretrain_image)

    synth = command("make-synthetic", help="write the synthetic video world (H.264 clips and lists)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--seed", type=int, default=0, help="random seed of the world")
    synth.add_argument("--train-per-class", type=int, default=24, help="training clips per class")
    synth.add_argument("--val-per-class", type=int, default=8, help="validation clips per class")
    synth.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    synth.add_argument("--frames", type=int, default=16, help="frames per clip")
    synth.add_argument("--sites", type=int, default=4, help="sites (backgrounds) for natural federated splits")
    synth.set_defaults(run=cmd_make_synthetic)

    rehearsal = command("make-kinetics-rehearsal", help="a small world in Kinetics-400's exact layout "
                                                                    "(CSV, train/ and val/, 400 classes) to rehearse "
                                                                    "the k400 recipes on")
    rehearsal.add_argument("out", help="output folder")
    rehearsal.add_argument("--train-per-class", type=int, default=2, help="training clips per class")
    rehearsal.add_argument("--val-per-class", type=int, default=1, help="validation clips per class")
    rehearsal.add_argument("--seed", type=int, default=0, help="random seed of the world")
    rehearsal.set_defaults(run=cmd_make_kinetics_rehearsal)

    part = command("partition", help="split a video list into federated clients")
    part.add_argument("list", help="annotation file (path label [group] list, Kinetics CSV, SSv2/Diving-48 JSON)")
    part.add_argument("--clients", type=int, help="number of clients (natural: defaults to the number of groups)")
    part.add_argument("--scheme", choices=SCHEMES, default="iid", help="how videos are split")
    part.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (smaller: more skewed)")
    part.add_argument("--classes-per-client", type=int, default=2, help="pathological: classes per client")
    part.add_argument("--min-size", type=int, default=1, help="Dirichlet: resample until every client has this many")
    part.add_argument("--seed", type=int, default=0, help="random seed of the split")
    part.add_argument("--format", default="auto", help="annotation format (default: from the file)")
    part.add_argument("--class-names", help="classes.txt or SSv2 labels.json")
    part.add_argument("--out", required=True, help="output folder")
    part.set_defaults(run=cmd_partition)

    # key=value overrides may also follow the options (`aimfl eval CONFIG --checkpoint F key=value`), which
    # argparse leaves over when a subcommand's positionals end before its options
    args, rest = parser.parse_known_args(argv)
    if rest and (not hasattr(args, "overrides") or any(item.startswith("-") or "=" not in item for item in rest)):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    if hasattr(args, "config_default") and args.config and "=" in args.config and not os.path.isfile(args.config):
        args.overrides, args.config = [args.config, *args.overrides], args.config_default
    try:
        code = args.run(args)
    except ConfigError as err:
        print(f"aimfl: config error: {err}", file=sys.stderr)
        return 2
    except AnnotationError as err:
        print(f"aimfl: annotation error: {err}", file=sys.stderr)
        return 2
    except (PretrainedWeightsError, TrainableStateError, CheckpointError, VideoReadError, RunDirError, PartitionError,
            FileExistsError) as err:
        print(f"aimfl: {err}", file=sys.stderr)
        return 2
    return code or 0
