"""Federated training through real `flwr run` simulations (SuperLink, SuperExec, Ray) on the synthetic world.

Each run uses a temporary FLWR_HOME and free ports, and stops the SuperLink it started.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from helpers import TINY, aimfl, tiny_overrides
from safetensors.torch import load_file

from aim_core.config import ConfigError, load_config
from aim_core.data.annotations import read_annotations
from aim_core.data.partition import write_partitions
from aim_core.engine.checkpoint import load_training_state
from aim_core.federated.codec import encode_state
from aim_core.federated.settings import APP_ROOT, FederatedSettings, default_run_config, experiment_config
from aim_core.model.factory import build_model
from aim_core.model.trainable import count_parameters, trainable_names, trainable_state
from aimfl.simulation import run_simulation
from server.server_app import main as server_main

# dropout and drop path on: federated clients must draw the same masks as centralized training
RANDOM_LAYERS = ("model.head_dropout=0.5", "model.drop_path_rate=0.1")


def run_config(world, parts, out, nodes, **values):
    config = {"config": TINY, "overrides": " ".join(tiny_overrides(world, out, *RANDOM_LAYERS)),
              "partition-dir": str(parts), "out-dir": str(out), "min-nodes": nodes, "num-server-rounds": 2,
              "batch-size": 8, "lr": 3e-3, "warmup-rounds": 1, "local-val-fraction": 0.2, "round-timeout": 120}
    config.update({key.replace("_", "-"): value for key, value in values.items()})
    return config


def flwr_run(config, nodes, log_path, app_dir=APP_ROOT):
    code = run_simulation(config, nodes, str(log_path), echo=lambda line: None, timeout=400, app_dir=app_dir)
    with open(log_path) as f:
        log = f.read()
    assert code == 0, log[-3000:]
    return log


def history(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def partitions(synthetic_world, tmp_path_factory):
    """IID splits of the session world (30 training videos) over 1, 2, 3 and 4 clients."""
    records = read_annotations(os.path.join(synthetic_world, "train.txt"), "list")
    root = tmp_path_factory.mktemp("partitions")
    for clients in (2, 3, 4):
        write_partitions(records, str(root / f"iid{clients}"), "iid", clients, 0.5, 2, seed=0)
    (root / "one").mkdir()
    shutil.copy(os.path.join(synthetic_world, "train.txt"), root / "one" / "client_000.txt")  # the very same list
    return root


@pytest.mark.slow
def test_three_clients_two_rounds_with_server_side_dp_write_checkpoint_metrics_privacy_and_exact_bytes(
        synthetic_world, partitions, tmp_path):
    """One run for all of these (each `flwr run` simulation costs about 45 s on 2 cores). No warm-up round: DP
    clipping refuses the all-zero update of a round at lr 0."""
    out = tmp_path / "run"
    config = run_config(synthetic_world, partitions / "iid3", out, 3, update_codec="fp16", dp_noise_multiplier=1.0,
                        dp_clipping_norm=0.5, weighting="uniform", warmup_rounds=0)
    log = flwr_run(config, 3, tmp_path / "flwr.log")
    assert "parameters are clipped" in log

    rounds = history(out)
    assert [r["round"] for r in rounds] == [1, 2]
    model = build_model(experiment_config(FederatedSettings.from_run_config({**default_run_config(), **config})).model)
    trainable = count_parameters(model)["trainable_params"]
    for record in rounds:
        assert record["accepted_updates"] == 3 and record["rejected_updates"] == 0
        assert len(record["clients"]) == 3
        for client in record["clients"].values():
            assert client["bytes_received"] == trainable * 2  # fp16 on the wire
            assert client["bytes_sent"] == 2 * trainable * 4  # train and evaluate messages, fp32 downlink (default)
        assert 0 <= record["central"]["top1"] <= 1 and record["client_eval"]["clients"] == 3
    final = json.loads((out / "final.json").read_text())
    assert final["bytes_per_update"] == trainable * 2 and final["rounds_done"] == 2
    assert final["privacy"]["epsilon"] > 0 and final["privacy"]["delta"] == pytest.approx(1e-5)
    assert final["full_model_bytes"] == count_parameters(model)["total_params"] * 4  # the whole model in fp32
    assert final["bytes_total"] == sum(r["bytes_sent"] + r["bytes_received"] for r in rounds)
    checkpoint = load_training_state(out / "checkpoints" / "last.pt")
    assert checkpoint["round"] == 2 and set(checkpoint["arrays"]) == set(trainable_names(model))
    for name in ("accuracy", "loss", "bytes", "label_distribution"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert "round 2: 3 accepted, 0 rejected" in log

    # the final state is a centralized-format checkpoint: `aimfl eval` uses it as it is
    result = aimfl("eval", TINY, *tiny_overrides(synthetic_world, out), "--checkpoint",
                   str(out / "final.safetensors"), "--out", str(tmp_path / "eval"))
    assert json.loads(result.stdout)["videos"] == 10


def test_client_replies_carry_only_the_trainable_state_and_scalar_metrics(synthetic_world, partitions, tmp_path,
                                                                          monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from client.client_app import train

    for name in ("_run_id", "_node_id", "_task_id"):  # what the SuperNode sets before it calls a ClientApp
        monkeypatch.setattr(TaskIdentity, name, 1)

    config = {**default_run_config(), **run_config(synthetic_world, partitions / "iid3", tmp_path, 3, warmup_rounds=0)}
    settings = FederatedSettings.from_run_config(config)
    model = build_model(experiment_config(settings).model)
    message = Message(RecordDict({"arrays": encode_state(trainable_state(model), "fp32"),
                                  "config": ConfigRecord({"server-round": 1})}), dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3},
                      state=RecordDict(), run_config=config)
    reply = train(message, context)
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert list(reply.content["arrays"].keys()) == trainable_names(model)
    metrics = dict(reply.content["metrics"])
    assert set(metrics) == {"train-loss", "num-examples", "skipped-videos", "train-seconds", "partition-id"}
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["num-examples"] == 8  # 10 videos, 2 held out for local evaluation
    sent = trainable_state(model)
    assert any(not np.array_equal(reply.content["arrays"][k].numpy(), sent[k].numpy()) for k in sent)


FAULTY_CLIENT = '''
import numpy as np
from flwr.app import Array
from flwr.clientapp import ClientApp

from client import client_app

app = ClientApp()
app.evaluate()(client_app.evaluate)


@app.train()
def train(msg, context):
    fault = int(context.node_config["partition-id"])
    if fault == 3:
        raise RuntimeError("injected client failure")
    reply = client_app.train(msg, context)
    arrays = reply.content["arrays"]
    first = next(iter(arrays.keys()))
    if fault == 1:
        values = arrays[first].numpy().copy()
        values.flat[0] = np.nan
        arrays[first] = Array(values)
    elif fault == 2:
        del arrays[first]
    return reply
'''


@pytest.mark.slow
def test_nan_missing_key_and_raising_clients_are_rejected_and_the_run_completes(synthetic_world, partitions, tmp_path):
    app = tmp_path / "app"
    for package in ("aim_core", "server", "client", "configs"):
        shutil.copytree(os.path.join(APP_ROOT, package), app / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(APP_ROOT, "pyproject.toml")) as f:
        pyproject = f.read().replace('clientapp = "client.client_app:app"', 'clientapp = "faulty_client:app"')
    (app / "pyproject.toml").write_text(pyproject)
    (app / "faulty_client.py").write_text(FAULTY_CLIENT)

    out = tmp_path / "run"
    config = run_config(synthetic_world, partitions / "iid4", out, 4, num_server_rounds=1, client_eval_every=0,
                        local_val_fraction=0.0, batch_size=4)
    log = flwr_run(config, 4, tmp_path / "flwr.log", app_dir=str(app))
    (record,) = history(out)
    assert record["accepted_updates"] == 1 and record["rejected_updates"] == 3
    reasons = sorted(r["reason"] for r in record["rejections"])
    assert any("error reply" in r and "injected client failure" in r for r in reasons)
    assert any("non-finite values" in r for r in reasons) and any("array set differs" in r and "1 missing" in r
                                                                  for r in reasons)
    assert log.count("rejected the update of node") == 3
    assert not record["kept_previous_state"] and (out / "final.safetensors").is_file()


@pytest.mark.slow
def test_without_a_val_list_rounds_are_checkpointed_and_a_failing_serverapp_fails_the_command(
        synthetic_world, partitions, tmp_path):
    out = tmp_path / "no-val"
    config = run_config(synthetic_world, partitions / "iid2", out, 2, num_server_rounds=1, central_eval_every=1,
                        local_val_fraction=0.0, client_eval_every=0)
    config["overrides"] += " data.val_list=null"
    log = flwr_run(config, 2, tmp_path / "no-val.log")
    assert log.count("no central evaluation in this run") == 1
    (record,) = history(out)
    assert "central" not in record and (out / "checkpoints" / "last.pt").is_file() and (out / "final.json").is_file()

    # a plain `flwr run` with a relative path: the ServerApp refuses it (it runs where the SuperLink started)
    broken = run_config(synthetic_world, partitions / "iid2", "relative-run", 2, num_server_rounds=1)
    broken["overrides"] = broken["overrides"].replace("output_dir=relative-run", "")
    code = run_simulation(broken, 2, str(tmp_path / "broken.log"), echo=lambda line: None, timeout=400)
    assert code == 1, (tmp_path / "broken.log").read_text()[-2000:]
    assert "relative paths in the run config: out-dir=relative-run" in (tmp_path / "broken.log").read_text()


def test_the_serverapp_refuses_more_supernodes_than_partitions_before_round_one(synthetic_world, partitions,
                                                                              tmp_path):
    """A plain `flwr run` of a simulation with an extra SuperNode: that node would have no partition to train. The
    ServerApp itself is called here, with a Grid that reports 3 nodes; a refusal travelling through `flwr run` is
    covered by the relative-path run above."""
    class ThreeNodes:
        def get_node_ids(self):
            return [11, 12, 13]

        def __getattr__(self, name):
            raise AssertionError(f"the ServerApp used the Grid ({name}) before refusing")

    config = {**default_run_config(),
              **run_config(synthetic_world, partitions / "iid2", tmp_path / "extra", 2, num_server_rounds=1)}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=config)
    with pytest.raises(ConfigError, match="3 SuperNodes, but partition-dir=.* holds 2 partitions"):
        server_main(ThreeNodes(), context)
    assert not (tmp_path / "extra" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_fedavg_with_one_client_equals_centralized_training(synthetic_world, partitions, tmp_path):
    overrides = [*tiny_overrides(synthetic_world, tmp_path / "central", *RANDOM_LAYERS), "schedule.epochs=2",
                 "schedule.warmup_epochs=0"]
    # one thread, as Ray gives the client (client-resources-num-cpus=1): another thread count sums in another order,
    # and two epochs of that drifted one weight of 256 by 1.5e-6 on a 2-core machine
    aimfl("train", TINY, *overrides, env={"OMP_NUM_THREADS": "1"})
    out = tmp_path / "federated"
    config = run_config(synthetic_world, partitions / "one", out, 1, num_server_rounds=1, local_epochs=2,
                        warmup_rounds=0, local_val_fraction=0.0, client_eval_every=0)
    flwr_run(config, 1, tmp_path / "flwr.log")
    central = load_file(tmp_path / "central" / "final.safetensors")
    federated = load_file(out / "final.safetensors")
    assert central.keys() == federated.keys()
    initial = trainable_state(build_model(load_config(TINY, overrides).model))
    for key in central:
        torch.testing.assert_close(federated[key], central[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(central[k], initial[k]) for k in central)  # it did train


@pytest.mark.slow
def test_fedadam_stopped_after_round_one_and_resumed_equals_an_uninterrupted_run(synthetic_world, partitions,
                                                                               tmp_path):
    """With top-k updates (their error-feedback residual) and clients keeping their AdamW moments: what a client
    keeps between rounds survives the resume too."""
    def fedadam(out, **values):
        return run_config(synthetic_world, partitions / "iid2", out, 2, strategy="fedadam", server_lr=0.01,
                          client_eval_every=0, central_eval_every=2, update_codec="topk", topk_fraction=0.1,
                          client_optimizer="kept", **values)

    flwr_run(fedadam(tmp_path / "full"), 2, tmp_path / "full.log")
    flwr_run(fedadam(tmp_path / "split", stop_after_round=1), 2, tmp_path / "first.log")
    assert load_training_state(tmp_path / "split" / "checkpoints" / "last.pt")["round"] == 1
    kept = sorted(p.name for p in (tmp_path / "split" / "client-state" / "client_000").iterdir())
    assert kept == ["optimizer_round00001.safetensors", "residual_round00001.safetensors"]
    log = flwr_run(fedadam(tmp_path / "split", resume=True), 2, tmp_path / "second.log")
    assert "resuming after round 1" in log

    assert [r["round"] for r in history(tmp_path / "split")] == [1, 2]
    full = load_training_state(tmp_path / "full" / "checkpoints" / "last.pt")
    split = load_training_state(tmp_path / "split" / "checkpoints" / "last.pt")
    assert split["round"] == full["round"] == 2
    for key in full["arrays"]:
        torch.testing.assert_close(split["arrays"][key], full["arrays"][key], rtol=1e-4, atol=1e-6)
    for moment in ("m_t", "v_t"):
        for key, value in full["strategy_state"][moment].items():
            np.testing.assert_allclose(split["strategy_state"][moment][key], value, rtol=1e-4, atol=1e-9)
