"""`flwr run` of this app on Flower's simulation engine, isolated and cleaned up.

`flwr run .` starts a detached "managed local SuperLink" on fixed ports and leaves it running.
`run_simulation` gives each run its own FLWR_HOME and free ports, streams the run's log, and stops
that SuperLink (and the processes it started) when the run ends, so demos, benchmarks and tests
leave nothing behind. Users can equally type `flwr run . --stream --run-config ...` themselves
(simulations/README.md).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time

from aim_core.config import ConfigError
from aim_core.data.partition import partition_lists
from aim_core.federated.settings import APP_ROOT, FederatedSettings, default_run_config, with_absolute_paths
from aimfl.processes import find_program, free_port, processes_mentioning, program_env, stream_command, toml_pairs

# what `flwr_exit` logs for an error (codes 100 and above; 0-99 are graceful exits)
FLOWER_ERROR_EXIT = re.compile(r"Exit Code: [1-9]\d{2,}")


def stop_local_superlink(flwr_home: str) -> None:
    """Stops the managed SuperLink of `flwr_home` and its process group (its SuperExec and ServerApp)."""
    for pid in processes_mentioning(os.path.join(flwr_home, "local-superlink")):
        try:
            os.killpg(os.getpgid(pid), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.time() + 10
    while processes_mentioning(os.path.join(flwr_home, "local-superlink")) and time.time() < deadline:
        time.sleep(0.2)
    for pid in processes_mentioning(os.path.join(flwr_home, "local-superlink")):
        os.kill(pid, signal.SIGKILL)


def run_simulation(run_config: dict, num_supernodes: int, log_path: str, client_cpus: int = 1,
                   client_gpus: float = 0.0, echo=None, timeout: float | None = None, app_dir: str = APP_ROOT,
                   ray_cpus: int | None = None) -> int:
    """Runs `flwr run APP_DIR --stream` with `run_config` overrides; returns its exit status.

    `ray_cpus` overrides the CPUs Ray schedules clients on (default: the machine's). Every output line goes to
    `log_path`, and to `echo(line)` when given (None: stdout). `flwr run` exits 0 even when the ServerApp failed;
    Flower then logs an "Exit Code: N" line (N >= 100, an error), so such a run returns 1 here.
    """
    flwr_home = tempfile.mkdtemp(prefix="aimfl-flwr-home-")
    env = program_env(FLWR_HOME=flwr_home,
                      # the app runs in this environment: no per-run `uv sync` (slow, and needs the network)
                      FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                      # every client's line in the log, not Ray's "[repeated 3x across cluster]" and a notice
                      RAY_DEDUP_LOGS="0",
                      FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
                      FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} "
                  f"client-resources-num-gpus={client_gpus}" + (f" init-args-num-cpus={ray_cpus}" if ray_cpus else ""))
    command = [find_program("flwr"), "run", app_dir, "--stream", "--run-config", toml_pairs(run_config),
               "--federation-config", federation]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    show = echo or (lambda line: print(line, end="", flush=True))
    failures = []

    def watch(line: str) -> None:
        if FLOWER_ERROR_EXIT.search(line):
            failures.append(line.strip())
        show(line)

    try:
        return stream_command(command, env, log_path, watch, timeout) or (1 if failures else 0)
    finally:
        stop_local_superlink(flwr_home)
        shutil.rmtree(flwr_home, ignore_errors=True)



def simulate(run_config: dict, nodes: int, log_path: str | None = None, client_cpus: int = 1,
             client_gpus: float = 0.0) -> int:
    """`aimfl simulate`: a checked `run_simulation` of this app; returns the exit status (non-zero if it failed).

    Everything is checked before any process starts: the run config (a bad key or an override contradicting it is
    named), and that `nodes` SuperNodes have a partition each. Relative paths are made absolute against the working
    directory, as a user typing them means. The log goes to `log_path` (default: beside the run folder,
    `OUT-DIR.flwr.log`), appended to when a run is resumed.
    """
    run_config = with_absolute_paths({**default_run_config(), **run_config}, os.getcwd())
    settings = FederatedSettings.from_run_config(run_config)
    available = len(partition_lists(settings.partition_dir))
    if nodes > available:
        raise ConfigError(f"--nodes {nodes}, but partition-dir={os.path.abspath(settings.partition_dir)} holds "
                          f"{available} partitions (client_XXX.txt): give at most {available} nodes")
    if nodes < available:
        print(f"note: {available - nodes} of the {available} partitions have no SuperNode and are not trained on",
              flush=True)
    log_path = log_path or os.path.abspath(settings.out_dir).rstrip(os.sep) + ".flwr.log"
    return run_simulation(run_config, nodes, log_path, client_cpus=client_cpus, client_gpus=client_gpus)
