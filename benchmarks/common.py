"""What the benchmark scripts share: one measurement per child process, and the report they print and save."""

from __future__ import annotations

import json
import os
import subprocess
import sys

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def child_result(name: str, command: list[str], env: dict | None = None) -> dict:
    """Runs one measurement in its own process (its memory peak and compile cache are its own) and returns the
    JSON object its last output line holds; a failed child stops the benchmark, showing its stderr."""
    out = subprocess.run([sys.executable, *command], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def save_report(report: dict, out: str) -> None:
    """Prints the report as JSON and writes it to `out`."""
    text = json.dumps(report, indent=2)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text + "\n")
