"""`aimfl local-federation`: a real Flower deployment on 127.0.0.1, from credentials to final adapters.

1. the videos: the synthetic world with one site per SuperNode and the embedded image model (as
   `aimfl demo`), or, for any other config, the videos and backbone weights the config names
   (a Kinetics rehearsal: `aimfl make-kinetics-rehearsal`); a random backbone is written to one
   file, so that the server and every site freeze the same weights;
2. the training list split into sites (`local_federation.scheme`: natural, the synthetic world's
   sites; iid, dirichlet or pathological for lists without sites, such as Kinetics);
3. each site's folder: its list and its copy of the backbone weights (pre-staged, as a real site
   has them);
4. credentials (reused when they exist): a CA and the SuperLink's TLS certificate
   (`aimfl make-certs`), and an ECDSA key pair in each site's folder (`aimfl make-site-key`),
   whose public half goes to the operator; `--insecure` (loudly warned) has none;
5. `flower-superlink` with TLS and node authentication, `flwr supernode register` per site, one
   `flower-supernode` per site with its node config, `flwr run` for the configured rounds;
6. every process stopped by PID; the final adapters in OUT/run/final.safetensors, one log file
   per process in OUT/federation/logs, each command in OUT/federation/commands.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from aim_core.config import ConfigError, load_config
from aim_core.data.annotations import read_annotations
from aim_core.data.partition import write_partitions
from aim_core.federated.settings import APP_ROOT
from aim_core.model.backbones import save_image_model
from aimfl.credentials import make_site_key, make_tls_certificates
from aimfl.deployment import Federation
from aimfl.processes import threads_each
from aimfl.staging import federated_progress, federated_run_config, prepare_backbone, prepare_world, step


def credentials(pki: str, site_folders: dict[str, str], insecure: bool) -> dict:
    """The SuperLink's TLS files in `pki` and each site's key pair in its own folder, made unless present.

    Insecure mode has neither: Flower authenticates SuperNodes only over TLS.
    """
    if insecure:
        return {"tls": None, "keys": dict.fromkeys(site_folders)}
    files = {"ca": "ca.crt", "cert": "server.pem", "key": "server.key"}
    if not all(os.path.isfile(os.path.join(pki, name)) for name in files.values()):
        make_tls_certificates(pki, ["127.0.0.1", "localhost"])
    tls = {role: os.path.join(pki, name) for role, name in files.items()}
    keys = {}
    for site, folder in site_folders.items():
        key = os.path.join(folder, site)
        if not os.path.isfile(key):
            make_site_key(key)
        keys[site] = key
    return {"tls": tls, "keys": keys}


SYNTHETIC_DATA = "data/synthetic-3sites"


def stage_weights(cfg, out: str) -> str:
    """The backbone weights file every site gets a copy of: the config's, or a random backbone written once."""
    backbone = cfg.model.backbone
    if backbone.checkpoint:
        return os.path.expanduser(backbone.checkpoint)
    if backbone.pretrained:
        raise ConfigError(f"model.backbone.pretrained={backbone.pretrained!r}: a site is given a weights file, not a "
                          f"hub tag; download the weights and set model.backbone.checkpoint=/path/to/weights")
    path = os.path.join(out, "backbone.pth")
    os.makedirs(out, exist_ok=True)
    save_image_model(backbone, cfg.model.image_size, path)
    return path


def run_local_federation(out: str, data_root: str | None = None, config: str = "demo",
                         overrides: tuple[str, ...] = (), insecure: bool = False) -> dict:
    """`data_root`: the synthetic world's folder (made if missing), for a config of the synthetic world only;
    any other config names its own videos (data.train_list, data.train_root, data.val_list, ...)."""
    started = time.time()
    out = os.path.abspath(out)
    synthetic = load_config(config, overrides).data.name == "synthetic"
    if synthetic:
        data_root = os.path.abspath(data_root or SYNTHETIC_DATA)
    elif data_root:
        raise ConfigError(f"--data {data_root}: the synthetic world's folder, but config {config!r} trains on its own "
                          f"videos; give them as data.train_list=... data.train_root=... (and data.val_list=...)")
    cfg = load_config(config, [f"data.root={data_root}", *overrides] if synthetic else overrides)
    plan = cfg.local_federation
    if synthetic:
        step(1, f"synthetic world of {plan.sites} sites in {data_root}, embedded image model")
        prepare_world(data_root, plan.sites)
        prepare_backbone(cfg)
    else:
        step(1, f"the config's videos ({cfg.data.train_list}) and backbone weights")
    records = read_annotations(cfg.data.train_list, cfg.data.list_format, cfg.data.class_names,
                               num_classes=cfg.data.num_classes)
    weights = cfg.model.backbone.checkpoint = stage_weights(cfg, out)
    print(f"    {len(records)} training videos; backbone weights {weights}")

    step(2, f"the training list split into {plan.sites} sites ({plan.scheme})")
    partitions = os.path.join(out, "partitions")
    summary = write_partitions(records, partitions, plan.scheme, plan.sites, plan.alpha, plan.classes_per_client,
                               cfg.seed, num_classes=cfg.data.num_classes, source=cfg.data.train_list)
    sites = [f"site{i}" for i in range(plan.sites)]
    print(f"    videos per site {[c['samples'] for c in summary['per_client']]}")

    step(3, "each site's folder: video list, pre-staged backbone weights")
    site_folders, site_configs = {site: os.path.join(out, "sites", site) for site in sites}, {}
    for i, (site, folder) in enumerate(site_folders.items()):
        os.makedirs(folder, exist_ok=True)
        shutil.copy(os.path.join(partitions, f"client_{i:03d}.txt"), os.path.join(folder, "train.txt"))
        shutil.copy(weights, os.path.join(folder, "backbone.pth"))
        site_configs[site] = {"list-file": os.path.join(folder, "train.txt"), "video-root": cfg.data.train_root,
                              "backbone-weights": os.path.join(folder, "backbone.pth")}
    print(f"    in {os.path.join(out, 'sites')}")

    pki = os.path.join(out, "pki")
    if insecure:
        step(4, "no credentials: --insecure runs without TLS and without node authentication")
    else:
        step(4, "credentials: CA and SuperLink certificate (operator), a key pair per site (in its folder)")
    creds = credentials(pki, site_folders, insecure)
    if not insecure:
        print(f"    in {pki} and the site folders")

    step(5, f"SuperLink, {plan.sites} SuperNodes, {plan.rounds} round(s)")
    workdir, run_dir = os.path.join(out, "federation"), os.path.join(out, "run")
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh SuperLink state and logs each time; credentials are kept
    run_config = federated_run_config(
        cfg, config, overrides, **{"num-server-rounds": plan.rounds, "local-epochs": plan.local_epochs,
                                   "warmup-rounds": 0, "min-nodes": plan.sites, "round-timeout": plan.round_timeout,
                                   "central-eval-every": 1, "partition-dir": partitions, "out-dir": run_dir,
                                   "overwrite": True})
    with Federation(workdir, creds["tls"], insecure=insecure) as federation:
        federation.start_superlink(auth=not insecure)
        pid = federation.services["superlink"].process.pid
        print(f"    SuperLink on {federation.address} (operator only, PID {pid}), the sites' Fleet-only address "
              f"{federation.fleet_address} (nginx)")
        videos = [client["samples"] for client in summary["per_client"]]
        sizes = {}  # the operator's record of each registered site's videos: the server weighs updates by it
        for site, count in zip(sites, videos):
            key = creds["keys"][site]
            node = federation.register(key + ".pub", site) if key else None
            federation.start_supernode(site, key, site_configs[site], threads=threads_each(len(sites)))
            if node is not None:
                sizes[str(node)] = count
            print(f"    {site}: {f'node {node}, ' if node else ''}PID {federation.services[site].process.pid}")
        if insecure:  # SuperNodes register themselves: the server cannot tell them apart, so they count alike
            sizes, run_config["weighting"] = {"*": max(videos)}, "uniform"
        run_config["site-sizes"] = os.path.join(workdir, "site-sizes.json")
        with open(run_config["site-sizes"], "w") as f:
            json.dump(sizes, f, indent=2)
        federation.run(APP_ROOT, run_config, echo=federated_progress)
    still_running = [s.name for s in federation.services.values() if s.process.poll() is None]
    if still_running:
        raise RuntimeError(f"could not stop {', '.join(still_running)}")

    step(6, "result")
    final_path = os.path.join(run_dir, "final.json")
    if not os.path.isfile(final_path):
        raise RuntimeError(f"the run wrote no {final_path}; see {os.path.join(workdir, 'logs', 'flwr-run.log')} and "
                           f"the SuperNode logs beside it")
    with open(final_path) as f:
        final = json.load(f)
    result = {"sites": plan.sites, "rounds": final["rounds_done"], "central": final["central"],
              "bytes_per_update": final["bytes_per_update"], "full_model_bytes": final["full_model_bytes"],
              "final_adapters": os.path.join(run_dir, "final.safetensors"), "tls_and_node_auth": not insecure,
              "logs": sorted(os.path.join(workdir, "logs", name) for name in os.listdir(os.path.join(workdir, "logs"))),
              "processes_stopped": len(federation.services), "wall_seconds": round(time.time() - started, 1)}
    with open(os.path.join(out, "local_federation.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"    {result['rounds']} round(s), central top-1 {final['central']['top1']:.1%}, "
          f"{result['bytes_per_update']:,} bytes per update "
          f"({result['bytes_per_update'] / result['full_model_bytes']:.1%} of the model)\n"
          f"    final adapters: {result['final_adapters']}\n    logs: {os.path.join(workdir, 'logs')}"
          f"\n    all {result['processes_stopped']} processes stopped; {result['wall_seconds']:.0f} s in all")
    return result
