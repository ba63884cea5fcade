"""The settings of a federated run and the aimfl config it trains.

`FederatedSettings` types the `[tool.flwr.app.config]` knobs of pyproject.toml (their defaults live
there and only there); `experiment_config` is the aimfl config they select and adjust.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tomllib
from dataclasses import dataclass

from aim_core.config import ConfigError, load_config
from aim_core.federated.wire import UPDATE_DTYPES

# the Flower app: pyproject.toml and the packages it ships
APP_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class FederatedSettings:
    """The run config of a federated run, typed; pyproject.toml `[tool.flwr.app.config]` documents each key."""

    config: str
    overrides: str
    num_server_rounds: int
    stop_after_round: int
    local_epochs: int
    lr: float
    warmup_rounds: int
    batch_size: int
    strategy: str
    proximal_mu: float
    server_lr: float
    beta_1: float
    beta_2: float
    tau: float
    trimmed_beta: float
    krum_malicious_nodes: int
    dp_noise_multiplier: float
    dp_clipping_norm: float
    dp_target_delta: float
    weighting: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    min_valid_replies: int
    round_timeout: float
    central_eval_every: int
    client_eval_every: int
    local_val_fraction: float
    update_dtype: str
    max_update_norm: float
    partition_dir: str
    out_dir: str
    resume: bool
    overwrite: bool
    seed: int

    @classmethod
    def from_run_config(cls, run_config: dict) -> FederatedSettings:
        values = {}
        for field in dataclasses.fields(cls):
            key = field.name.replace("_", "-")
            if key not in run_config:
                raise ConfigError(f"run config lacks {key!r}; declare it in pyproject.toml [tool.flwr.app.config]")
            kind = {"str": str, "int": int, "float": float, "bool": bool}[field.type]
            value = run_config[key]
            if kind is not str and isinstance(value, str) or kind is bool and not isinstance(value, bool):
                raise ConfigError(f"run config {key}={value!r} is not a {field.type}")
            values[field.name] = kind(value)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.update_dtype not in UPDATE_DTYPES:
            raise ConfigError(f"run config update-dtype={self.update_dtype!r}; choose one of "
                              f"{', '.join(UPDATE_DTYPES)}")
        if self.weighting not in ("num-examples", "uniform"):
            raise ConfigError(f"run config weighting={self.weighting!r}; choose num-examples or uniform")
        if self.dp_noise_multiplier > 0 and self.weighting != "uniform":
            raise ConfigError("differential privacy (dp-noise-multiplier > 0) needs weighting=\"uniform\": "
                              "the accountant's sensitivity bound assumes equal client weights")
        if self.client_eval_every and not self.local_val_fraction > 0:
            raise ConfigError("client-eval-every > 0 needs local-val-fraction > 0 "
                              "(clients evaluate on held-out videos)")
        if not 0 <= self.local_val_fraction < 1:
            raise ConfigError(f"run config local-val-fraction={self.local_val_fraction} must be in [0, 1)")

    @property
    def last_round(self) -> int:
        """The round this invocation stops after (`stop-after-round` ends a run early, to resume later)."""
        return min(self.num_server_rounds, self.stop_after_round or self.num_server_rounds)


def default_run_config() -> dict:
    """The `[tool.flwr.app.config]` defaults of pyproject.toml, flattened as Flower flattens them."""
    with open(os.path.join(APP_ROOT, "pyproject.toml"), "rb") as f:
        app_config = tomllib.load(f)["tool"]["flwr"]["app"]["config"]

    def flatten(node: dict, prefix: str = "") -> dict:
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return flat

    return flatten(app_config)


def experiment_config(settings: FederatedSettings):
    """The aimfl config the run trains: `config` with `overrides`, its schedule stretched over the rounds.

    The cosine schedule spans rounds x local epochs, with `warmup-rounds` of warmup; every client
    follows it by its own updates per epoch, so round r trains at the same point of the schedule
    as epoch (r-1) x local-epochs of a centralized run.
    """
    epochs = settings.num_server_rounds * settings.local_epochs
    fixed = [f"schedule.lr={settings.lr}", f"schedule.batch_size={settings.batch_size}", f"schedule.epochs={epochs}",
             f"schedule.warmup_epochs={settings.warmup_rounds * settings.local_epochs}", f"seed={settings.seed}",
             f"output_dir={settings.out_dir}"]
    return load_config(settings.config, shlex.split(settings.overrides) + fixed)
