"""Flower's deployment processes on one machine: a SuperLink behind a Fleet-only proxy, SuperNodes, `flwr`.

Flower's SuperLink serves its Fleet API (what SuperNodes use), its Control API (`flwr run`,
`flwr supernode register`, `flwr ls`, `flwr log`: no user authentication) and its Runtime API on one
HTTP port. Whoever reaches that port can submit a run, and a run is code that executes on every
site. So the SuperLink listens on the operator's loopback only, and the address the sites dial is
nginx, which forwards the twelve Fleet routes a SuperNode calls (`FLEET_ROUTES`, read from flwr's
`supernode/fleet_http_client.py`) and refuses everything else (403). Only the operator, on the
SuperLink's machine, can start a run.

`Federation` starts nginx (`fleet_proxy_config`), Flower's own `flower-superlink` and
`flower-supernode` executables, each as a process in its own session (so its SuperExec and app
processes go with it) writing its own log file, registers SuperNode keys with `flwr supernode
register`, and runs `flwr run` against a connection it writes into its own FLWR_HOME. `stop()` ends
every process it started, by PID. `aimfl local-federation` and the deployment tests use it;
operators type the same commands on their machines (docs/deployment.md, `aimfl make-proxy-config`),
and `commands.sh` in the work dir lists each one.

TLS is on unless `insecure=True`, which prints a loud warning: the adapters and the metrics then
cross the network in clear text, and no SuperNode is authenticated (Flower's node authentication
needs TLS).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Self

from aimfl.processes import find_program, free_port, program_env, stream_command, toml_pairs, toml_value

INSECURE_WARNING = ("INSECURE MODE: TLS is off and SuperNodes are not authenticated. Model updates and metrics "
                    "cross the network unencrypted, anyone on the path can read or alter them, and any process can "
                    "join as a site. Use it only to debug on one machine.")


def warn_insecure() -> None:
    banner = "!" * 100
    print(f"\n{banner}\n{INSECURE_WARNING}\n{banner}\n", file=sys.stderr, flush=True)


# The Fleet API routes a SuperNode calls (POST, flwr 1.41 and 1.42); tests/test_sites.py checks them against flwr.
FLEET_ROUTES = ("register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat",
                "pull-messages", "push-messages", "get-run", "get-fab", "push-object", "pull-object",
                "confirm-message-received")


def fleet_proxy_config(listen: str, superlink_port: int, workdir: str, tls: dict[str, str] | None) -> str:
    """An nginx configuration that serves the SuperLink's Fleet API on `listen` (HOST:PORT) and nothing else.

    The SuperLink listens on 127.0.0.1:`superlink_port`; with `tls` ({"ca", "cert", "key"}) nginx terminates the
    sites' TLS with the SuperLink's certificate and verifies the SuperLink's (as `localhost`) against the CA.
    Requests and replies stream through unbuffered (app bundles and 5 MiB array chunks pass as they come).
    """
    scheme = "http" if tls is None else "https"
    server_tls = "" if tls is None else (
        f"        ssl_certificate {tls['cert']};\n        ssl_certificate_key {tls['key']};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n")
    upstream_tls = "" if tls is None else (
        f"            proxy_ssl_trusted_certificate {tls['ca']};\n            proxy_ssl_verify on;\n"
        "            proxy_ssl_name localhost;\n            proxy_ssl_server_name on;\n")
    routes = "|".join(FLEET_ROUTES)
    return f"""# aimfl: the sites' address serves Flower's Fleet API only; the rest stays on the operator's machine
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {workdir}/nginx-access.log;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    client_max_body_size 64m;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 3600s;
    proxy_send_timeout 3600s;
    server {{
        listen {listen}{"" if tls is None else " ssl"};
{server_tls}        location ~ ^/v1/fleet/({routes})$ {{
            limit_except POST {{ deny all; }}
            proxy_pass {scheme}://127.0.0.1:{superlink_port};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
{upstream_tls}        }}
        location / {{ return 403; }}
    }}
}}
"""


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log_path: str

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Federation:
    """A SuperLink and its SuperNodes on 127.0.0.1; use as a context manager so every process is stopped.

    workdir: logs (`logs/<name>.log`), the SuperLink's state database, FLWR_HOME and `commands.sh`.
    tls: {"ca": ca.crt, "cert": server.pem, "key": server.key} from `make_tls_certificates`;
    None needs `insecure=True`.
    """

    def __init__(self, workdir: str, tls: dict[str, str] | None, insecure: bool = False,
                 connection: str = "aimfl-local"):
        if tls is None and not insecure:
            raise ValueError("a federation needs TLS certificates (aimfl make-certs), or insecure=True")
        if insecure:
            warn_insecure()
        self.workdir = os.path.abspath(workdir)
        self.logs = os.path.join(self.workdir, "logs")
        self.flwr_home = os.path.join(self.workdir, "flwr-home")
        os.makedirs(self.logs, exist_ok=True)
        os.makedirs(self.flwr_home, exist_ok=True)
        self.tls, self.insecure, self.connection = tls, insecure, connection
        self.port = free_port()  # the SuperLink, on loopback: the operator's `flwr` commands use it
        self.fleet_port = free_port()  # the Fleet-only proxy: what the SuperNodes dial
        self.services: dict[str, Service] = {}
        # sites run the environment they have: no `uv sync` of the app's dependencies per run
        self.env = program_env(FLWR_HOME=self.flwr_home, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                               PYTHONUNBUFFERED="1")
        self._write_connection()
        with open(os.path.join(self.workdir, "commands.sh"), "w") as f:
            f.write(f"# the commands this federation ran, in order\nexport FLWR_HOME={shlex.quote(self.flwr_home)}\n"
                    "export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1\n")

    @property
    def address(self) -> str:
        """The SuperLink itself, on the operator's loopback."""
        return f"127.0.0.1:{self.port}"

    @property
    def fleet_address(self) -> str:
        """The sites' address: the Fleet API only."""
        return f"127.0.0.1:{self.fleet_port}"

    def _write_connection(self) -> None:
        """The `flwr` CLI's connection to this SuperLink, in FLWR_HOME/config.toml."""
        security = "insecure = true" if self.insecure else f"root-certificates = {toml_value(self.tls['ca'])}"
        with open(os.path.join(self.flwr_home, "config.toml"), "w") as f:
            f.write(f'[superlink]\ndefault = "{self.connection}"\n\n[superlink.{self.connection}]\n'
                    f"address = {toml_value(self.address)}\n{security}\n")

    def _record(self, command: list[str], env: dict[str, str] | None = None) -> None:
        with open(os.path.join(self.workdir, "commands.sh"), "a") as f:
            f.write(" ".join([*(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()),
                              *(shlex.quote(part) for part in command)]) + "\n")

    def _start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Service:
        """Starts `command` as service `name`, with `env` added to the federation's environment."""
        if name in self.services and self.services[name].process.poll() is None:
            raise RuntimeError(f"{name} is already running (PID {self.services[name].process.pid})")
        self._record(command, env)
        log_path = os.path.join(self.logs, f"{name}.log")
        with open(log_path, "a") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                       cwd=self.workdir, start_new_session=True)
        self.services[name] = Service(name, process, log_path)
        return self.services[name]

    def wait_for(self, name: str, pattern: str, timeout: float = 60) -> None:
        """Waits until `name`'s log matches `pattern`; fails if the process exits or the time runs out."""
        service = self.services[name]
        deadline = time.time() + timeout
        while time.time() < deadline:
            if re.search(pattern, service.log_text()):
                return
            if service.process.poll() is not None:
                raise RuntimeError(f"{name} exited with status {service.process.returncode} before "
                                   f"{pattern!r} appeared; see {service.log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"{name}: {pattern!r} did not appear in {timeout:.0f} s; see {service.log_path}")

    def start_superlink(self, auth: bool = True) -> Service:
        """The SuperLink on loopback, and the Fleet-only proxy in front of it on the sites' address."""
        if auth and self.insecure:
            raise ValueError("Flower's SuperNode authentication needs TLS: start the SuperLink with auth=False in "
                             "insecure mode")
        security = ["--insecure"] if self.insecure else [
            "--ssl-ca-certfile", self.tls["ca"], "--ssl-certfile", self.tls["cert"], "--ssl-keyfile", self.tls["key"]]
        command = [find_program("flower-superlink"), *security, *(["--enable-supernode-auth"] if auth else []),
                   "--disable-runtime-dependency-installation", "--database", os.path.join(self.workdir, "state.db"),
                   "--host", "127.0.0.1", "--port", str(self.port)]
        service = self._start("superlink", command)
        self.wait_for("superlink", "Uvicorn running")
        self.start_fleet_proxy()
        return service

    def start_fleet_proxy(self) -> Service:
        """nginx on the sites' address, forwarding the Fleet API to the SuperLink and refusing the rest."""
        config = os.path.join(self.workdir, "nginx.conf")
        with open(config, "w") as f:
            f.write(fleet_proxy_config(self.fleet_address, self.port, self.workdir, self.tls))
        service = self._start("fleet-proxy", [find_program("nginx"), "-p", self.workdir, "-c", config,
                                              "-e", os.path.join(self.workdir, "nginx-error.log")])
        self._wait_for_port(self.fleet_port, "fleet-proxy")
        return service

    def _wait_for_port(self, port: int, name: str, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if self.services[name].process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {self.services[name].process.returncode}; see "
                                       f"{self.services[name].log_path} and {self.workdir}/nginx-error.log") from None
                time.sleep(0.1)
        raise TimeoutError(f"{name} did not listen on port {port} within {timeout:.0f} s")

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A `flwr` CLI command against this federation's connection; its output is appended to logs/flwr.log."""
        command = [find_program("flwr"), *args]
        self._record(command)
        result = subprocess.run(command, env=self.env, cwd=self.workdir, capture_output=True, text=True, check=False,
                                timeout=timeout)
        with open(os.path.join(self.logs, "flwr.log"), "a") as log:
            log.write(f"$ {shlex.join(command)}\n{result.stdout}{result.stderr}\n")
        return result

    def register(self, public_key: str, name: str) -> int:
        """Registers a SuperNode's public key with the SuperLink; returns its node id."""
        result = self.flwr("supernode", "register", public_key, self.connection, "--name", name, "--format", "json")
        try:
            reply = json.loads(result.stdout)
        except json.JSONDecodeError:
            reply = {}
        if result.returncode or not reply.get("success", True) or "node-id" not in reply:
            raise RuntimeError(f"flwr supernode register {public_key} failed: {result.stdout}{result.stderr}")
        return int(reply["node-id"])

    def nodes(self) -> list[dict]:
        """`flwr supernode ls`: the registered SuperNodes and their status."""
        result = self.flwr("supernode", "ls", self.connection, "--format", "json")
        if result.returncode:
            raise RuntimeError(f"flwr supernode ls failed: {result.stdout}{result.stderr}")
        return json.loads(result.stdout)["nodes"]

    def wait_for_node(self, node_id: int, status: str, timeout: float = 120) -> None:
        """Waits until the SuperLink reports the node `online` or `offline` (a lost node is offline after 2 missed
        30 s heartbeats; it is let back in only then)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(int(n["node-id"]) == node_id and n["status"] == status for n in self.nodes()):
                return
            time.sleep(2)
        raise TimeoutError(f"node {node_id} was not {status} within {timeout:.0f} s; see {self.logs}")

    def start_supernode(self, name: str, private_key: str | None, node_config: dict,
                        threads: int | None = None) -> Service:
        """A SuperNode with its own local port, authenticating with `private_key` (an OpenSSH ECDSA key).

        `threads`: the CPU threads its ClientApps compute on, for sites that share one machine's cores (three
        sites on 2 cores trained 5-7x slower with a thread per core each than with one thread each: README,
        local-federation). None: torch's default, every core."""
        security = ["--insecure"] if self.insecure else ["--root-certificates", self.tls["ca"]]
        auth = ["--auth-supernode-private-key", private_key] if private_key else []
        command = [find_program("flower-supernode"), "--superlink", self.fleet_address, *security, *auth,
                   "--port", str(free_port()), "--node-config", toml_pairs(node_config)]
        return self._start(name, command, {"OMP_NUM_THREADS": str(threads)} if threads else {})

    def run(self, app_dir: str, run_config: dict, timeout: float | None = None, echo=None) -> int:
        """`flwr run APP_DIR CONNECTION --stream`, logged to logs/flwr-run.log; returns its exit status.

        The status is 0 even when the ServerApp failed: check the run's outputs.
        """
        command = [find_program("flwr"), "run", app_dir, self.connection, "--stream",
                   "--run-config", toml_pairs(run_config)]
        self._record(command)
        return stream_command(command, self.env, os.path.join(self.logs, "flwr-run.log"), echo, timeout, self.workdir)

    def kill(self, name: str) -> None:
        """SIGKILLs a service and everything in its session, as a crash would."""
        _signal_group(self.services[name].process, signal.SIGKILL)
        self.services[name].process.wait()

    def stop(self) -> None:
        """Stops every process this federation started: SIGTERM by PID, then SIGKILL after 10 s."""
        running = [s for s in self.services.values() if s.process.poll() is None]
        for service in running:
            _signal_group(service.process, signal.SIGTERM)
        deadline = time.time() + 10
        for service in running:
            try:
                service.process.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for service in self.services.values():  # the group too: a SuperExec may outlive its parent
            _signal_group(service.process, signal.SIGKILL)
            service.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
