"""`flwr run` of this app on Flower's simulation engine, isolated and cleaned up.

`flwr run .` starts a detached "managed local SuperLink" on fixed ports and leaves it running.
`run_simulation` gives each run its own FLWR_HOME and free ports, streams the run's log, and stops
that SuperLink (and the processes it started) when the run ends, so demos, benchmarks and tests
leave nothing behind. Users can equally type `flwr run . --stream --run-config ...` themselves
(simulations/README.md).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from aim_core.federated import APP_ROOT


class ProgramNotFoundError(FileNotFoundError):
    """A console script of aimfl's dependencies (flwr, flower-superlink, torchrun, ...) is not installed."""


def interpreter_bin() -> str:
    """The folder of the running Python, where its environment's console scripts are: a virtual environment used
    without being activated (cron, systemd, `/venv/bin/python -m ...`) has them there, not on PATH."""
    return os.path.dirname(sys.executable)


def find_program(name: str) -> str:
    """The path of a console script: beside the running interpreter first, then on PATH."""
    beside = os.path.join(interpreter_bin(), name)
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise ProgramNotFoundError(
        f"{name} not found, neither beside the running Python ({interpreter_bin()}) nor on PATH "
        f"({os.environ.get('PATH', '')}); install aimfl into this environment (pip install -e .) or run it with "
        "that environment's python")


def program_env(**values: str) -> dict[str, str]:
    """This process's environment plus `values`, with the interpreter's folder first on PATH: Flower's programs
    start each other by name (the SuperLink its SuperExec, the SuperExec the apps), so they must find this
    environment's copies too."""
    path = os.pathsep.join(filter(None, (interpreter_bin(), os.environ.get("PATH"))))
    return {**os.environ, "PATH": path, **values}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    return repr(value)


def toml_pairs(values: dict) -> str:
    """`key=value ...` as `--run-config` and `--node-config` take them."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains `text` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


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


def stream_command(command: list[str], env: dict, log_path: str, echo=None, timeout: float | None = None,
                   cwd: str | None = None) -> int:
    """Runs `command` (in its own session), appending each output line to `log_path` and passing it to `echo`;
    kills the session and raises after `timeout` seconds. Returns the exit status."""
    started = time.time()
    with open(log_path, "a") as log, subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True,
                                                      start_new_session=True) as process:
        log.write("$ " + shlex.join(command) + "\n")
        for line in process.stdout:
            log.write(line)
            log.flush()
            if echo:
                echo(line)
            if timeout and time.time() - started > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                raise TimeoutError(f"{command[0]} {command[1]} took more than {timeout:.0f} s (log: {log_path})")
        return process.wait()


def run_simulation(run_config: dict, num_supernodes: int, log_path: str, client_cpus: int = 1,
                   client_gpus: float = 0.0, echo=None, timeout: float | None = None, app_dir: str = APP_ROOT,
                   ray_cpus: int | None = None) -> int:
    """Runs `flwr run APP_DIR --stream` with `run_config` overrides; returns its exit status.

    `ray_cpus` overrides the CPUs Ray schedules clients on (default: the machine's). Every output line goes to `log_path`, and to `echo(line)` when given (None: stdout). The exit
    status is 0 even when the ServerApp failed: check for the run's outputs.
    """
    flwr_home = tempfile.mkdtemp(prefix="aimfl-flwr-home-")
    env = program_env(FLWR_HOME=flwr_home,
                      # the app runs in this environment: no per-run `uv sync` (slow, and needs the network)
                      FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                      FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(free_port()),
                      FLWR_LOCAL_CONTROL_API_PORT=str(free_port()))
    federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus={client_cpus} "
                  f"client-resources-num-gpus={client_gpus}" + (f" init-args-num-cpus={ray_cpus}" if ray_cpus else ""))
    command = [find_program("flwr"), "run", app_dir, "--stream", "--run-config", toml_pairs(run_config),
               "--federation-config", federation]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    open(log_path, "w").close()
    try:
        return stream_command(command, env, log_path, echo or (lambda line: print(line, end="", flush=True)), timeout)
    finally:
        stop_local_superlink(flwr_home)
        shutil.rmtree(flwr_home, ignore_errors=True)

