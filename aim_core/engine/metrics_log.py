"""A run's metrics: one JSON line per epoch or round in `metrics.jsonl`, and TensorBoard scalars."""

from __future__ import annotations

import json
import os


class MetricsLog:
    """Appends records `{step_name: step, ...}` to OUT/metrics.jsonl and their numbers to OUT/tensorboard;
    `enabled=False` (DDP ranks other than 0) writes nothing.

    A resumed run keeps the records up to the step it resumes after (`resume_after`) and drops later ones: the
    steps after the last checkpoint are run again, and logged once.
    """

    def __init__(self, out_dir: str, step_name: str, enabled: bool = True, resume_after: int = 0):
        self.enabled, self.step_name = enabled, step_name
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path = os.path.join(out_dir, "metrics.jsonl")
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                kept = [line for line in f if json.loads(line)[step_name] <= resume_after]
        with open(self.path, "w") as f:
            f.writelines(kept)
        self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def log_step(self, update: int, loss: float, lr: float) -> None:
        """Per-step scalars, in TensorBoard only (`step/loss`, `step/lr` against optimiser updates)."""
        if self.enabled:
            self.writer.add_scalar("step/loss", loss, update)
            self.writer.add_scalar("step/lr", lr, update)

    def log(self, step: int, **values) -> None:
        """One record; its numbers are also TensorBoard scalars at `step`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({self.step_name: step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
