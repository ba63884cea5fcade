"""A run's output folder: never shared by two runs, never silently overwritten, no half-written files left.

`open_run_dir` is called once, before a run writes anything:
- it takes an exclusive lock (`.lock`, holding the owner's PID) for the life of the process, so a
  second run into the same folder fails at once, naming the PID that holds it;
- it removes the temporary files an interrupted save left behind (`*.tmp-PID`, see
  `checkpoint.atomic_write`); the lock guarantees no other run is writing them;
- a folder holding an earlier run is refused unless the run resumes it, or `overwrite` is asked
  for, which removes that run's files and only those: files a run does not write are never touched.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
from dataclasses import dataclass

# What centralized and federated runs write into their folder (client-state: what simulated clients keep between
# rounds, `aim_core.federated.local.ClientStore`).
RUN_FILES = ("config.yaml", "metrics.jsonl", "final.json", "final.safetensors", "best.safetensors", "checkpoints",
             "eval", "plots", "tensorboard", "client-state")
LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """The output folder is in use, or holds an earlier run that was neither resumed nor meant to be replaced."""


@dataclass
class RunDir:
    """A locked output folder; the lock is released by `close()`, at the end of a `with` block, or with the process."""

    path: str
    lock_fd: int

    def close(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run_dir(path: str, resume: bool = False, overwrite: bool = False, key: str = "output_dir") -> RunDir:
    """Locks `path` for this run and checks what it holds (see the module docstring); `key` names the setting in
    error messages."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirError(f"{key}={path} is in use by another run (PID {holder}); wait for it to end or choose "
                          "another folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    for stale in glob.glob(os.path.join(glob.escape(path), "**", "*.tmp-*"), recursive=True):
        os.remove(stale)
    earlier = [name for name in RUN_FILES if os.path.exists(os.path.join(path, name))]
    if earlier and not resume:
        if not overwrite:
            os.close(fd)
            raise RunDirError(f"{key}={path} holds an earlier run ({', '.join(earlier)}); resume it, choose another "
                              "folder, or ask for overwrite to replace it")
        for name in earlier:
            target = os.path.join(path, name)
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    return RunDir(path, fd)
