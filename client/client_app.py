"""The Flower ClientApp: local AIM training and evaluation on one site's videos.

Each message carries the global trainable state (and nothing else); the reply carries the
trainable state after `local-epochs` epochs of the same `Trainer` steps `aimfl train` runs, plus
scalar metrics. Videos, paths and labels never leave the client.

The frozen backbone is built once per process and reused: a simulation worker serves many
clients and rounds with one model, reloading only the trainable state from each message. A
deployed SuperNode starts a fresh ClientApp process per message, which loads the site's
pre-staged backbone weights once, memory-mapped (see `aim_core/model/backbones.py`).

Where the videos are: a deployed site names its list file, video root and backbone weights in
its node config; a simulated client gets a partition id (`aim_core.federated.local.client_setup`).
"""

from __future__ import annotations

import json
import traceback
from logging import ERROR, INFO

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from aim_core.config import to_dict
from aim_core.engine.evaluation import evaluate_records
from aim_core.engine.precision import default_device
from aim_core.federated.codec import decode_state, encode_update
from aim_core.federated.local import client_setup, client_store, train_round
from aim_core.federated.settings import FederatedSettings
from aim_core.model.factory import build_model
from aim_core.model.trainable import load_trainable_state, trainable_state


def errors_stay_on_site(msg: Message, context: Context, call_next) -> Message:
    """A Flower mod: a failure is logged here in full; the server's error reply names its kind, not the site's
    paths or data (an exception's message may hold both)."""
    try:
        return call_next(msg, context)
    except Exception as err:  # noqa: BLE001 -- every failure, re-raised without its details
        log(ERROR, "%s", traceback.format_exc())
        public = getattr(err, "public", "the details are in this site's SuperNode log")
        raise RuntimeError(f"{type(err).__name__} on the site: {public}") from None


app = ClientApp(mods=[errors_stay_on_site])
_models: dict[str, torch.nn.Module] = {}  # model config -> the model built for it in this process


def model_with(cfg, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The process's model for `cfg.model` (built on first use), holding the received trainable state."""
    key = json.dumps(to_dict(cfg.model), sort_keys=True)
    if key not in _models:
        _models.clear()  # one backbone in memory at a time
        _models[key] = build_model(cfg.model, seed=cfg.seed).to(default_device())
    model = _models[key]
    load_trainable_state(model, {k: v.to(default_device()) for k, v in state.items()}, source="the server's message")
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    settings = FederatedSettings.from_run_config(context.run_config)
    cfg, data = client_setup(context.node_config, settings)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    received = decode_state(msg.content["arrays"])
    model = model_with(cfg, received)
    store = client_store(context.node_config, settings, data, context.state)
    metrics = train_round(model, cfg, data, server_round, settings.local_epochs,
                          float(config.get("proximal-mu", 0.0)), default_device(),
                          store=store if settings.client_optimizer == "kept" else None)
    log(INFO, "round %d: trained on %d videos of %s in %.1f s, loss %.4f, %d unreadable skipped", server_round,
             metrics["num-examples"], data.source, metrics["train-seconds"], metrics["train-loss"],
             metrics["skipped-videos"])
    residual = store.load("residual", server_round) if settings.update_codec == "topk" else None
    arrays, residual = encode_update(trainable_state(model), received, settings.update_codec, settings.topk_fraction,
                                     residual)
    if residual is not None:
        store.save("residual", server_round, residual)
    reply = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    settings = FederatedSettings.from_run_config(context.run_config)
    cfg, data = client_setup(context.node_config, settings)
    if not data.val:
        raise ValueError(f"{data.source}: no held-out videos to evaluate on (local-val-fraction=0)")
    model = model_with(cfg, decode_state(msg.content["arrays"]))
    result = evaluate_records(model, cfg, data.val, data.root, default_device())
    metrics = {"eval-top1": result["top1"], "eval-loss": result["loss"], "num-examples": result["videos"],
               "skipped-videos": result["skipped"], "partition-id": data.partition}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

