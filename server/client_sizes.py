"""What the server knows of each client, rather than what the client says: how many videos it trains on, hence the
weight of its update, the `num-examples` its reply must report, and the largest update its optimiser can make.

- Simulation: the partition lists in `partition-dir`, written on the server's side by `aimfl partition`. A reply
  names its partition (`partition-id`); a partition may answer once per round.
- Deployment: `site-sizes`, the operator's JSON file {"<node id>": <videos>}, written when the sites were
  registered (`aimfl local-federation` writes it). A reply is known by its node id; an entry "*" stands for
  every node the file does not name (for SuperNodes that register themselves, without node authentication).

The bound on an update's L2 norm follows from AdamW: one update moves a parameter by lr x |m^ / (sqrt(v^) + eps)|,
at most lr (1 - beta1) / sqrt(1 - beta2) = 3.16 lr with the betas used here (Kingma & Ba, 2015, section 2.1), plus
lr x weight decay x |w|, where a parameter's lr is the run's times its group's scale (`schedule.backbone_lr_mult`,
`schedule.temporal_lr_mult`). Over the k updates of a round, an honest update therefore stays below
k x lr x (3.16 sqrt(sum of scale^2 x parameters) + largest scale x weight decay x ||w||) (`adamw_step_scales`);
`update-norm-factor` (3.2) is the first constant. Measured on the
demo's federated run (4 clients, 12 rounds, lr 1e-2, 1 to 5 updates per round): honest updates reached 0.002 to 0.31
of their bound, the highest being a single update at the peak lr, where Adam's first step moves every parameter by
exactly lr (a norm of lr sqrt(P), 1/3.2 of the bound). Each client's `update-norm` and `norm-bound` are in the
round's line of metrics.jsonl.
"""

from __future__ import annotations

import json

from aim_core.config import ConfigError
from aim_core.data.annotations import read_annotations
from aim_core.data.partition import partition_lists
from aim_core.federated.local import held_out_count, local_updates
from aim_core.federated.settings import FederatedSettings


class ClientSizes:
    """The videos of every client the server knows, by partition (simulation) or by node id (deployment)."""

    def __init__(self, settings: FederatedSettings, cfg, step_scales: tuple[float, float]):
        self.settings, self.cfg = settings, cfg
        self.unit_step, self.decay_scale = step_scales  # aim_core.engine.step.adamw_step_scales
        self.by_node = bool(settings.site_sizes)
        self.videos = self._read_site_sizes() if self.by_node else self._read_partitions()

    def _read_site_sizes(self) -> dict[int, int]:
        path = self.settings.site_sizes
        try:
            with open(path) as f:
                table = json.load(f)
            sizes = {node if node == "*" else int(node): int(videos) for node, videos in table.items()}
        except (OSError, ValueError, AttributeError, TypeError) as err:
            raise ConfigError(f"run config site-sizes={path!r}: expected a JSON file of {{\"<node id>\": <videos>}} "
                              f"({type(err).__name__}: {err})") from err
        if not sizes or min(sizes.values()) < 1:
            raise ConfigError(f"run config site-sizes={path!r}: every registered site needs at least one video")
        return sizes

    def _read_partitions(self) -> dict[int, int]:
        folder = self.settings.partition_dir
        lists = partition_lists(folder)
        if not lists:
            raise ConfigError(f"the server needs each client's number of videos: no client_XXX.txt lists in "
                              f"partition-dir={folder!r} (simulation), and no site-sizes file (deployment)")
        return {partition: len(read_annotations(path, "list")) for partition, path in lists.items()}

    def identify(self, node: int, metrics) -> tuple[int | None, str | None]:
        """(the key of the client's record, None) or (None, why the reply names no client the server knows)."""
        if self.by_node:
            return (node, None) if node in self.videos or "*" in self.videos else \
                (None, f"node {node} is not in site-sizes")
        partition = metrics.get("partition-id")
        if not isinstance(partition, int) or partition not in self.videos:
            return None, f"partition-id {partition!r} is not one of the {len(self.videos)} partitions"
        return partition, None

    def videos_of(self, key: int) -> int:
        return self.videos[key] if key in self.videos else self.videos["*"]

    def train_videos(self, key: int) -> int:
        videos = self.videos_of(key)
        return videos - held_out_count(videos, self.settings.local_val_fraction)

    def weight(self, key: int) -> float:
        return float(self.train_videos(key)) if self.settings.weighting == "videos" else 1.0

    def max_update_norm(self, key: int, global_norm: float) -> float:
        """The bound on the L2 norm of this client's update in one round (see the module docstring)."""
        updates = local_updates(self.train_videos(key), self.cfg, self.settings.local_epochs)
        per_update = self.settings.update_norm_factor * self.unit_step + self.decay_scale * global_norm
        return updates * self.settings.lr * per_update
