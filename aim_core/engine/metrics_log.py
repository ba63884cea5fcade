"""A run's metrics: one JSON line per epoch or round in `metrics.jsonl`, and TensorBoard scalars."""

from __future__ import annotations

import json
import os


class MetricsLog:
    """Appends records to OUT/metrics.jsonl and their numbers to OUT/tensorboard; `enabled=False` (DDP ranks other
    than 0) writes nothing."""

    def __init__(self, out_dir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.path = os.path.join(out_dir, "metrics.jsonl")
            self.writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))

    def log(self, step_name: str, step: int, **values) -> None:
        """One record: `{step_name: step, **values}`; numbers are also TensorBoard scalars at `step`."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({step_name: step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
