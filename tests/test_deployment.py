"""Flower deployment on 127.0.0.1: a TLS SuperLink with node authentication and real SuperNode processes.

Every federation has its own FLWR_HOME, state database and free ports, and stops each process it
started by PID (`aimfl.deployment.Federation`). The backbone is a tiny random timm ViT saved to
a file, standing in for the weights each site pre-stages.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import TINY, aimfl, needs_nginx, save_tiny_backbone

from aim_core.data.annotations import read_annotations
from aim_core.data.synthetic import make_synthetic
from aim_core.engine.checkpoint import load_training_state
from aim_core.federated.settings import APP_ROOT
from aimfl.credentials import make_site_key, make_tls_certificates
from aimfl.deployment import Federation
from aimfl.processes import find_program, interpreter_bin, processes_mentioning, program_env, threads_each

pytestmark = [pytest.mark.slow, needs_nginx]  # every test here runs Flower's processes

ROUND_TIMEOUT = 40  # seconds: a round of the tiny model takes about 20 s on 2 cores, process starts included


@pytest.fixture(autouse=True, scope="module")
def environment_not_activated():
    """Operators start the environment's python from cron or systemd without activating it: its console scripts
    (flwr, flower-superlink, flower-supernode) are then not on PATH. Every test here runs that way."""
    saved = os.environ["PATH"]
    os.environ["PATH"] = os.pathsep.join(p for p in saved.split(os.pathsep) if os.path.abspath(p) != interpreter_bin())
    yield
    os.environ["PATH"] = saved


def site_overrides(world, weights):
    """The server's overrides: its data root and its copy of the backbone weights (sites use their node config's)."""
    return [f"data.root={world}", f"model.backbone.checkpoint={weights}"]  # the run folder is the run's out-dir


@pytest.fixture(scope="module")
def deployment(synthetic_world, tmp_path_factory):
    """Credentials, the backbone weights file and two site lists of the session world (one naming a lost video)."""
    root = tmp_path_factory.mktemp("deployment")
    weights = save_tiny_backbone(synthetic_world, root / "backbone.pth")
    pki = make_tls_certificates(str(root / "pki"), ["127.0.0.1", "localhost"])
    tls = {"ca": pki["ca.crt"], "cert": pki["server.pem"], "key": pki["server.key"]}
    keys = {name: make_site_key(str(root / "keys" / name))[0] for name in ("site0", "site1", "rogue")}
    with open(os.path.join(synthetic_world, "train.txt")) as f:
        lines = f.read().splitlines()
    lists = {}
    for i, site in enumerate(("site0", "site1")):
        lists[site] = str(root / f"{site}.txt")
        with open(lists[site], "w") as f:
            f.write("\n".join(line for n, line in enumerate(lines) if n % 2 == i) + "\n")
    lost = str(root / "site0_with_lost_video.txt")
    with open(lost, "w") as f:
        f.write(Path(lists["site0"]).read_text() + "videos/train/site0/lost_in_transfer.mp4 3 site0\n")
    return {"root": root, "world": str(synthetic_world), "weights": weights, "tls": tls, "keys": keys,
            "lists": lists, "lost": lost}


def node_config(deployment, list_file):
    return {"list-file": list_file, "video-root": deployment["world"], "backbone-weights": deployment["weights"]}


def run_config(deployment, out, **values):
    config = {"config": TINY, "overrides": " ".join(site_overrides(deployment["world"], deployment["weights"])),
              "out-dir": str(out), "num-server-rounds": 2, "batch-size": 4, "warmup-rounds": 1,
              "round-timeout": ROUND_TIMEOUT, "client-eval-every": 0, "local-val-fraction": 0.0}
    config.update({key.replace("_", "-"): value for key, value in values.items()})
    return config


def history(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def start_sites(federation, deployment, lists):
    """Registers and starts one SuperNode per site; returns their node ids and the operator's site-sizes file."""
    ids, sizes = {}, {}
    for site, list_file in lists.items():
        ids[site] = federation.register(deployment["keys"][site] + ".pub", site)
        sizes[str(ids[site])] = len(read_annotations(list_file))
        federation.start_supernode(site, deployment["keys"][site], node_config(deployment, list_file),
                                   threads=threads_each(len(lists)))
    path = Path(federation.workdir) / "site-sizes.json"
    path.write_text(json.dumps(sizes))
    return ids, str(path)


def kill_on(federation, site, pattern):
    """Kills `site` (SIGKILL, its whole session) once its log matches `pattern`, from a thread."""
    def wait_and_kill():
        federation.wait_for(site, pattern, timeout=300)
        federation.kill(site)

    thread = threading.Thread(target=wait_and_kill, daemon=True)
    thread.start()
    return thread


def test_local_federation_command_two_tls_supernodes_two_rounds_then_aimfl_eval(deployment, tmp_path):
    world = tmp_path / "world"
    make_synthetic(str(world), seed=1, train_per_class=2, val_per_class=1, sites=2, progress=False)
    out = tmp_path / "local"
    overrides = site_overrides(str(world), deployment["weights"])
    result = aimfl("local-federation", TINY, "--out", str(out), "--data", str(world),
                   "local_federation.sites=2", "local_federation.rounds=2", *overrides, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((out / "local_federation.json").read_text())
    assert summary["rounds"] == 2 and summary["tls_and_node_auth"] and summary["processes_stopped"] == 4
    rounds = history(out / "run")
    assert [r["round"] for r in rounds] == [1, 2] and all(r["accepted_updates"] == 2 for r in rounds)
    logs = {os.path.basename(p) for p in summary["logs"]}
    assert {"superlink.log", "fleet-proxy.log", "site0.log", "site1.log", "flwr-run.log"} <= logs
    assert processes_mentioning(str(out)) == []  # every process it started is gone
    commands = (out / "federation" / "commands.sh").read_text()
    assert "--ssl-certfile" in commands and "--enable-supernode-auth" in commands and "--insecure" not in commands
    # the two sites share this machine's cores: each computes on its half of them
    threads = f"OMP_NUM_THREADS={threads_each(2)} "
    assert [line.startswith(threads) for line in commands.splitlines() if "flower-supernode" in line] == [True] * 2
    private_key = (out / "sites" / "site0" / "site0").read_text().splitlines()[1]
    for path in (out / "federation" / "logs").iterdir():
        assert "PRIVATE KEY" not in path.read_text() and private_key not in path.read_text()

    # the app bundle every site received holds code and configs only
    (app,) = (out / "federation" / "flwr-home" / "apps").iterdir()
    shipped = [p for p in app.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in shipped) < 10 * 2**20
    assert {p.suffix for p in shipped} <= {".py", ".toml", ".md", ".yaml", ".json"}

    evaluated = aimfl("eval", TINY, *overrides, "--checkpoint", summary["final_adapters"],
                      "--out", str(tmp_path / "eval"), check=False)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["videos"] == 10


def attacker(federation, deployment, tmp_path):
    """`flwr` as someone who has the CA certificate and reaches the sites' address, not the operator's machine."""
    home = tmp_path / "attacker-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "attack"\n\n[superlink.attack]\naddress = "{federation.fleet_address}"\n'
        f'root-certificates = "{deployment["tls"]["ca"]}"\n')
    env = program_env(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")

    def flwr(*args):
        return subprocess.run([find_program("flwr"), *args], env=env, capture_output=True, text=True, timeout=120)

    return flwr


def post(federation, deployment, path):
    """The HTTP status of a POST to `path` at the sites' address, over TLS verified by the CA."""
    context = ssl.create_default_context(cafile=deployment["tls"]["ca"])
    connection = http.client.HTTPSConnection("127.0.0.1", federation.fleet_port, context=context, timeout=30)
    connection.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
    return connection.getresponse().status


def test_an_attack_through_the_sites_address_is_refused_and_no_run_reaches_a_site(deployment, tmp_path):
    """The attack of the hardening issue: with only ca.crt, register a key, submit a run, list runs, read logs."""
    attacker_key, _ = make_site_key(str(tmp_path / "attacker"))
    with Federation(str(tmp_path / "federation"), deployment["tls"]) as federation:
        federation.start_superlink(auth=True)
        ids, _ = start_sites(federation, deployment, {"site0": deployment["lists"]["site0"]})
        federation.wait_for("site0", "Starting Flower SuperNode|Connecting|SuperNode ID|activated", timeout=60)
        flwr = attacker(federation, deployment, tmp_path)
        attempts = {"register a key": flwr("supernode", "register", attacker_key + ".pub", "attack"),
                    "submit a run": flwr("run", APP_ROOT, "attack"),
                    "list runs": flwr("ls", "attack", "--format", "json"),
                    "read a run's log": flwr("log", "1", "attack", "--show")}
        statuses = {path: post(federation, deployment, path) for path in
                    ("/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs",
                     "/v1/runtime/pull-messages", "/docs", "/v1/fleet/../control/list-runs")}
        fleet_status = post(federation, deployment, "/v1/fleet/pull-messages")
        time.sleep(7)  # two of the SuperNode's 3 s polls: a run that got through would be pulled by now
        runs = json.loads(federation.flwr("ls", federation.connection, "--format", "json").stdout)
        nodes = [int(node["node-id"]) for node in federation.nodes()]
        site_log = federation.services["site0"].log_text()
        access_log = (Path(federation.workdir) / "nginx-access.log").read_text()
    for what, result in attempts.items():  # the proxy answered every one with 403
        assert "403 Forbidden" in result.stdout + result.stderr, f"{what}: {result.stdout}{result.stderr}"
    assert set(statuses.values()) == {403}, statuses
    assert fleet_status != 403  # the Fleet API itself is served (this empty request is Flower's to refuse)
    assert runs.get("runs", []) == [] and nodes == [ids["site0"]]
    assert "Receiving" not in site_log and "clientapp" not in site_log
    assert " 403 " in access_log and "/v1/control/start-run" in access_log


@pytest.fixture(scope="module")
def faulty_run(deployment, tmp_path_factory):
    """min-nodes=1, 2 rounds: site0's list names a lost video, site1 is killed in round 1, and a SuperNode with an
    unregistered key tries to join. Returns what the tests below check."""
    root = tmp_path_factory.mktemp("faulty")
    out = root / "run"
    with Federation(str(root / "federation"), deployment["tls"]) as federation:
        federation.start_superlink(auth=True)
        ids, sizes = start_sites(federation, deployment, {"site0": deployment["lost"],
                                                          "site1": deployment["lists"]["site1"]})
        rogue = federation.start_supernode("rogue", deployment["keys"]["rogue"],
                                           node_config(deployment, deployment["lists"]["site1"]))
        killer = kill_on(federation, "site1", "Receiving: train message")
        federation.run(APP_ROOT, run_config(deployment, out, min_nodes=1, central_eval_every=0, site_sizes=sizes),
                       timeout=400)
        killer.join(1)
        registered = [int(node["node-id"]) for node in federation.nodes()]

        # TLS is on: the CA verifies the SuperLink as 127.0.0.1, and plain HTTP gets no answer
        context = ssl.create_default_context(cafile=deployment["tls"]["ca"])
        with socket.create_connection(("127.0.0.1", federation.fleet_port)) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls_version = tls.version()
        with socket.create_connection(("127.0.0.1", federation.fleet_port), timeout=5) as raw:
            raw.sendall(b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            try:
                plain_answer = raw.recv(100)
            except ConnectionResetError:
                plain_answer = b""
    return {"out": out, "ids": ids, "rogue": rogue, "registered": registered, "tls_version": tls_version,
            "plain_answer": plain_answer, "superlink_log": federation.services["superlink"].log_text(),
            "run_log": Path(os.path.join(federation.logs, "flwr-run.log")).read_text()}


def test_the_run_completes_on_one_supernode_when_the_other_is_killed_with_min_nodes_1(faulty_run):
    out, ids = faulty_run["out"], faulty_run["ids"]
    rounds = history(out)
    assert [r["round"] for r in rounds] == [1, 2], faulty_run["run_log"][-3000:]
    for record in rounds:
        assert record["accepted_updates"] == 1 and str(ids["site0"]) in record["clients"]
        assert "train-loss" not in record["clients"].get(str(ids["site1"]), {})
    assert f"node(s) {ids['site1']} did not" in faulty_run["run_log"]
    assert json.loads((out / "final.json").read_text())["rounds_done"] == 2
    assert (out / "final.safetensors").is_file()


def test_an_unregistered_supernode_is_refused_and_never_receives_a_task(faulty_run):
    rogue = faulty_run["rogue"]
    assert rogue.process.returncode not in (None, 0)  # refused, and said so
    assert "Failed to activate SuperNode" in rogue.log_text()
    assert "Receiving" not in rogue.log_text() and "clientapp" not in rogue.log_text()
    assert "No SuperNode found with the given public key" in faulty_run["superlink_log"]
    assert sorted(faulty_run["registered"]) == sorted(faulty_run["ids"].values())
    assert faulty_run["tls_version"] in ("TLSv1.2", "TLSv1.3")
    plain = faulty_run["plain_answer"]  # nothing is served in clear text: nginx refuses it (or closes)
    assert plain == b"" or plain.startswith(b"HTTP/1.1 400"), plain


def test_a_lost_video_in_a_site_list_is_skipped_counted_and_the_round_completes(faulty_run):
    site0 = str(faulty_run["ids"]["site0"])
    for record in history(faulty_run["out"]):
        assert record["accepted_updates"] == 1 and record["clients"][site0]["skipped-videos"] == 1
        assert record["skipped_videos"] == 1


def test_min_nodes_2_stops_at_the_round_timeout_and_resume_continues_after_the_last_round(deployment, tmp_path):
    out = tmp_path / "run"
    with Federation(str(tmp_path / "federation"), deployment["tls"]) as federation:
        federation.start_superlink(auth=True)
        ids, sizes = start_sites(federation, deployment, deployment["lists"])
        config = run_config(deployment, out, min_nodes=2, central_eval_every=0, site_sizes=sizes)
        kill_on(federation, "site1", "Receiving: train message(.|\n)*Receiving: train message")  # in round 2
        federation.run(APP_ROOT, config, timeout=400)
        run_log_path = os.path.join(federation.logs, "flwr-run.log")
        stopped_log = Path(run_log_path).read_text()
        assert "run stopped: round 2: 1 of the 2 sampled nodes replied, fewer than min-nodes=2" in stopped_log, \
            stopped_log[-3000:]
        assert "resume=true to continue from round 2" in stopped_log
        assert [r["round"] for r in history(out)] == [1]
        assert load_training_state(out / "checkpoints" / "last.pt")["round"] == 1
        assert not (out / "final.safetensors").exists()

        # the SuperLink lets the site back in once it has marked it offline (2 missed heartbeats)
        federation.wait_for_node(ids["site1"], "offline", timeout=120)
        federation.start_supernode("site1", deployment["keys"]["site1"],
                                   node_config(deployment, deployment["lists"]["site1"]),
                                   threads=threads_each(2))
        federation.run(APP_ROOT, {**config, "resume": True}, timeout=400)
        resumed_log = Path(run_log_path).read_text()[len(stopped_log):]

    assert "resuming after round 1" in resumed_log, resumed_log[-3000:]
    rounds = history(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[1]["accepted_updates"] == 2
    assert set(rounds[1]["clients"]) == {str(ids["site0"]), str(ids["site1"])}
    assert json.loads((out / "final.json").read_text())["rounds_done"] == 2
