"""The settings of a federated run and the aimfl config it trains.

`FederatedSettings` types the `[tool.flwr.app.config]` knobs of pyproject.toml (their defaults live
there and only there); `experiment_config` is the aimfl config they select and adjust.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shlex
import tomllib
from dataclasses import dataclass

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aim_core.config import ConfigError, load_config
from aim_core.federated.codec import CODECS, DOWNLINK_CODECS

# The Flower app (pyproject.toml, server/, client/): the source tree, or aim_core/federated/app/ where a wheel
# installed it (pyproject.toml maps the one to the other).
_INSTALLED_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app")
APP_ROOT = _INSTALLED_APP if os.path.isfile(os.path.join(_INSTALLED_APP, "pyproject.toml")) else \
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _choice(*options):
    return f"one of {', '.join(options)}", lambda v: v in options


def _between(low, high):
    return f"a value in [{low}, {high}]", lambda v: low <= v <= high


# (run-config key, what it must be, the check) for every number and choice of the run config
SETTINGS_RANGES = [
    ("num-server-rounds", *_between(1, 100_000)),
    ("stop-after-round", *_between(0, 100_000)),
    ("local-epochs", *_between(1, 10_000)),
    ("lr", "a number above 0", lambda v: v > 0),
    ("warmup-rounds", *_between(0, 100_000)),
    ("batch-size", *_between(1, 1_000_000)),
    ("strategy", *_choice("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedmedian", "fedtrimmedavg",
                          "krum")),
    ("proximal-mu", "a number of at least 0", lambda v: v >= 0),
    ("avgm-lr", "a number above 0", lambda v: v > 0),
    ("avgm-momentum", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("server-lr", "a number above 0", lambda v: v > 0),
    ("beta-1", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("beta-2", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("tau", "a number above 0", lambda v: v > 0),
    ("trimmed-beta", "a number in [0, 0.5)", lambda v: 0 <= v < 0.5),
    ("krum-malicious-nodes", *_between(0, 100_000)),
    ("dp-noise-multiplier", "a number of at least 0", lambda v: v >= 0),
    ("dp-clipping-norm", "a number above 0", lambda v: v > 0),
    ("dp-target-delta", "a number in (0, 1)", lambda v: 0 < v < 1),
    ("weighting", *_choice("videos", "uniform")),
    ("fraction-train", "a number in (0, 1]", lambda v: 0 < v <= 1),
    ("fraction-evaluate", *_between(0, 1)),
    ("min-nodes", *_between(1, 100_000)),
    ("min-valid-replies", *_between(1, 100_000)),
    ("round-timeout", "a number of seconds above 0", lambda v: v > 0),
    ("central-eval-every", *_between(0, 100_000)),
    ("client-eval-every", *_between(0, 100_000)),
    ("local-val-fraction", "a number in [0, 1)", lambda v: 0 <= v < 1),
    ("client-optimizer", *_choice("fresh", "kept")),
    ("update-codec", *_choice(*CODECS)),
    ("downlink-codec", *_choice(*DOWNLINK_CODECS)),
    ("topk-fraction", "a number in (0, 1]", lambda v: 0 < v <= 1),
    ("update-norm-factor", "a number above 0", lambda v: v > 0),
    ("seed", *_between(0, 2**32 - 1)),
]


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
    avgm_lr: float
    avgm_momentum: float
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
    client_optimizer: str
    update_codec: str
    downlink_codec: str
    topk_fraction: float
    update_norm_factor: float
    partition_dir: str
    site_sizes: str
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
            value = run_config[key]
            expected = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}[field.type]
            if not isinstance(value, expected) or isinstance(value, bool) and field.type != "bool":
                raise ConfigError(f"run config {key}={value!r} is not a{'n' if field.type == 'int' else ''} "
                                  f"{field.type}")
            values[field.name] = float(value) if field.type == "float" else value
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Every value in its range, named in the error (the run stops before any round)."""
        for key, expected, ok in SETTINGS_RANGES:
            value = getattr(self, key.replace("-", "_"))
            if isinstance(value, float) and not math.isfinite(value) or not ok(value):
                raise ConfigError(f"run config {key}={value!r} is out of range: expected {expected}")
        if self.warmup_rounds > self.num_server_rounds:
            raise ConfigError(f"run config warmup-rounds={self.warmup_rounds} exceeds num-server-rounds="
                              f"{self.num_server_rounds}")
        if self.min_valid_replies > self.min_nodes:
            raise ConfigError(f"run config min-valid-replies={self.min_valid_replies} exceeds min-nodes="
                              f"{self.min_nodes}: no round could ever aggregate")
        if self.dp_noise_multiplier > 0 and self.weighting != "uniform":
            raise ConfigError("differential privacy (dp-noise-multiplier > 0) needs weighting=\"uniform\": "
                              "the accountant's sensitivity bound assumes equal client weights")
        if self.client_eval_every and not self.local_val_fraction > 0:
            raise ConfigError("client-eval-every > 0 needs local-val-fraction > 0 "
                              "(clients evaluate on held-out videos)")
        self.check_overrides()

    def run_config_keys(self) -> dict[str, tuple[object, str]]:
        """The aimfl config keys the run config sets: key -> (value, the run-config keys it comes from)."""
        local = self.local_epochs
        return {"schedule.lr": (self.lr, "lr"), "schedule.batch_size": (self.batch_size, "batch-size"),
                "schedule.epochs": (self.num_server_rounds * local, "num-server-rounds x local-epochs"),
                "schedule.warmup_epochs": (self.warmup_rounds * local, "warmup-rounds x local-epochs"),
                "seed": (self.seed, "seed"), "output_dir": (self.out_dir, "out-dir")}

    def check_overrides(self) -> None:
        """`overrides` may repeat what the run config sets, never contradict it: each key has one place."""
        try:
            given = OmegaConf.from_dotlist(shlex.split(self.overrides))
        except (ValueError, OmegaConfBaseException) as err:
            raise ConfigError(f"run config overrides={self.overrides!r}: {err}") from None
        for key, (value, source) in self.run_config_keys().items():
            override = OmegaConf.select(given, key)
            if override is None:
                continue
            same = os.path.abspath(str(override)) == os.path.abspath(str(value)) if key == "output_dir" else \
                isinstance(override, (int, float)) and float(override) == float(value)
            if not same:
                raise ConfigError(f"run config overrides sets {key}={override}, but the run config's {source} sets "
                                  f"it to {value}: set it once, in {source}")

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


def experiment_config(settings: FederatedSettings, site: bool = False):
    """The aimfl config the run trains: `config` with `overrides`, its schedule stretched over the rounds.

    The cosine schedule spans rounds x local epochs, with `warmup-rounds` of warmup; every client
    follows it by its own updates per epoch, so round r trains at the same point of the schedule
    as epoch (r-1) x local-epochs of a centralized run.

    `site=True` is a deployed site's view: `config` must name a config of the app bundle (never a path on the
    site), and of the overrides only those a run may change are applied (`SITE_OVERRIDABLE`: the schedule, the
    model variant, the seed); the rest, paths and workers among them, is the site's own (its node config).
    """
    fixed = [f"{key}={value}" for key, (value, _) in settings.run_config_keys().items()
             if not (site and key == "output_dir")]
    overrides = shlex.split(settings.overrides)
    if site:
        overrides = [item for item in overrides if item.startswith(SITE_OVERRIDABLE)]
    return load_config(settings.config, overrides + fixed, bundled_only=site)


# The paths of a run: its run-config keys, and the keys of the aimfl config it trains
RUN_PATH_KEYS = ("partition-dir", "out-dir", "site-sizes")
CONFIG_PATH_KEYS = ("data.root", "data.train_root", "data.val_root", "data.train_list", "data.val_list",
                    "data.class_names", "model.backbone.checkpoint")


def relative_paths(settings: FederatedSettings, cfg) -> list[str]:
    """The paths (`key=value`) of a run and of its config `cfg` that are relative. A Flower run resolves them
    against the SuperLink's working directory, wherever it was started, not where `flwr run` was typed."""
    used = [key for key in RUN_PATH_KEYS if not (key == "partition-dir" and settings.site_sizes)]  # deployment
    given = [(key, getattr(settings, key.replace("-", "_"))) for key in used]
    given += [(key, OmegaConf.select(cfg, key)) for key in CONFIG_PATH_KEYS]
    return [f"{key}={value}" for key, value in given if value and not _absolute(value)]


def _absolute(path) -> bool:
    return os.path.isabs(os.path.expanduser(str(path)))


def with_absolute_paths(run_config: dict, base: str) -> dict:
    """A complete `run_config` with every relative path made absolute against `base`, as a user typing a relative
    path means it: the run-config keys in place, the config's paths as overrides appended."""
    absolute = {key: os.path.join(base, value) if key in RUN_PATH_KEYS and value and not _absolute(value)
                else value for key, value in run_config.items()}
    cfg = experiment_config(FederatedSettings.from_run_config(absolute))
    fixes = [f"{key}={os.path.join(base, str(value))}" for key in CONFIG_PATH_KEYS
             if (value := OmegaConf.select(cfg, key)) and not _absolute(value)]
    absolute["overrides"] = " ".join(filter(None, [absolute["overrides"], shlex.join(fixes)]))
    return absolute


# What a run may set on a deployed site through `overrides` (key prefixes)
SITE_OVERRIDABLE = ("schedule.", "model.variant=", "seed=")
