"""Running the programs aimfl relies on (Flower's, torchrun) as child processes: finding them, their
environment, free ports, their command-line values, and streaming their output."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time


class ProgramNotFoundError(FileNotFoundError):
    """A console script of aimfl's dependencies (flwr, flower-superlink, torchrun, ...) is not installed."""


def interpreter_bin() -> str:
    """The folder of the running Python, where its environment's console scripts are: a virtual environment used
    without being activated (cron, systemd, `/venv/bin/python -m ...`) has them there, not on PATH."""
    return os.path.dirname(sys.executable)


# Programs of the system rather than of the Python environment, with where they live when PATH lacks them.
SYSTEM_PROGRAMS = {"nginx": ("/usr/sbin", "install nginx (Debian and Ubuntu: apt-get install nginx)")}


def find_program(name: str) -> str:
    """The path of a program: beside the running interpreter first, then on PATH (then, for a system program such as
    nginx, in its usual folder)."""
    folder, hint = SYSTEM_PROGRAMS.get(name, (None, "install aimfl into this environment (pip install -e .) or "
                                                    "run it with that environment's python"))
    for candidate in (os.path.join(interpreter_bin(), name), shutil.which(name),
                      folder and os.path.join(folder, name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise ProgramNotFoundError(
        f"{name} not found, neither beside the running Python ({interpreter_bin()}) nor on PATH "
        f"({os.environ.get('PATH', '')}); {hint}")


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


def threads_each(sharers: int) -> int:
    """The CPU threads each of `sharers` processes computing at once on this machine gets: its cores split evenly,
    at least one."""
    return max(1, (os.cpu_count() or 1) // sharers)


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
