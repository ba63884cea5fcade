"""Experiment configs: omegaconf YAML composed from bases, with strict keys.

`configs/base.yaml` declares every key and its default. An experiment file lists the
files it builds on under `_base_` (paths relative to itself, merged in order) and then
sets its own keys; `key=value` overrides from the command line come last. A key that
base.yaml does not declare is an error naming the key and where it came from, so a
typo never silently trains with a default. So is a value of another type than the
default's (`schedule.lr=abc`), and a value outside its range (`schedule.epochs=0`,
`data.num_classes=2000000000`): bad input stops before anything runs.
"""

from __future__ import annotations

import functools
import math
import os

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

# configs/ of the source tree, or aim_core/configs/ where a wheel installed them (pyproject.toml maps one to the other)
_INSTALLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
CONFIG_DIR = _INSTALLED_CONFIGS if os.path.isdir(_INSTALLED_CONFIGS) else \
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BASE_FILE = os.path.join(CONFIG_DIR, "base.yaml")
# Free-form sections whose keys are not declared in base.yaml.
OPEN_SECTIONS = ("model.backbone.overrides",)


class ConfigError(ValueError):
    pass


def resolve_config_path(name: str, bundled_only: bool = False) -> str:
    """A path, or a config name looked up in the package's configs/ folder; `bundled_only`: a name only."""
    if bundled_only and (os.sep in name or name.startswith(".")):
        raise ConfigError(f"config {name!r}: only the name of a config in {CONFIG_DIR} is accepted here, not a path")
    candidates = [os.path.join(CONFIG_DIR, name), os.path.join(CONFIG_DIR, f"{name}.yaml")]
    for candidate in candidates if bundled_only else [name, *candidates]:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config {name!r} not found (neither a file nor a name in {CONFIG_DIR})")


def list_configs() -> list[tuple[str, str]]:
    """(name, first comment line) of each experiment config in configs/ (base.yaml and the data/ fragments are
    layers, not experiments)."""
    listed = []
    for file in sorted(os.listdir(CONFIG_DIR)):
        if not file.endswith(".yaml") or file == "base.yaml":
            continue
        with open(os.path.join(CONFIG_DIR, file)) as f:
            first = f.readline().strip()
        listed.append((file[:-len(".yaml")], first.lstrip("# ") if first.startswith("#") else ""))
    return listed


def _read_layers(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file's bases (recursively, in order) followed by the file itself."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ includes form a cycle")
    try:
        node = OmegaConf.load(path)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        raise ConfigError(f"{path}:{mark.line + 1}: not valid YAML: {err.problem}") from err
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a config file holds a mapping of keys, not a {type(node).__name__}")
    bases = node.pop("_base_", [])
    layers = []
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file {base!r} not found")
        layers += _read_layers(base_path, seen + (path,))
    return layers + [(path, node)]


def _kind(value) -> str | None:
    """The kind of value a default declares (None: any value is accepted, as for a null default)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return None


def _fits(value, kind: str) -> bool:
    if value is None or kind is None:
        return True
    if kind == "true or false":
        return isinstance(value, bool)
    if kind == "an integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"a string": str, "a list": list}[kind])


def _check_types(layer: DictConfig, source: str) -> None:
    """Every value the layer sets has the kind of its base.yaml default (interpolations are checked once
    resolved, by their target)."""
    base = _base_defaults()
    for key, value in _leaves(OmegaConf.to_container(layer, resolve=False)):
        default = base
        for part in key.split("."):
            default = default.get(part) if isinstance(default, dict) else None
        if isinstance(default, str) and default.startswith("${") or isinstance(value, str) and value.startswith("${"):
            continue
        kind = _kind(default)
        if not _fits(value, kind):
            raise ConfigError(f"{key}={value!r} in {source}: expected {kind}, as its default {default!r}")


def _leaves(node, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not any(name == s or name.startswith(s + ".") for s in OPEN_SECTIONS):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


@functools.cache
def _base_defaults() -> dict:
    return OmegaConf.to_container(OmegaConf.load(BASE_FILE), resolve=False)


def _merge_strict(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
    _check_types(layer, source)
    try:
        return OmegaConf.merge(cfg, layer)
    except (ConfigKeyError, ConfigAttributeError) as err:
        key = getattr(err, "full_key", None) or str(err)
        raise ConfigError(f"unknown config key {key!r} in {source}; every key must be declared in {BASE_FILE}") from err
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: {err}") from err


def _strict(cfg: DictConfig) -> DictConfig:
    OmegaConf.set_struct(cfg, True)
    for section in OPEN_SECTIONS:
        OmegaConf.set_struct(OmegaConf.select(cfg, section), False)
    return cfg


def _apply_overrides(cfg: DictConfig, overrides, name: str) -> DictConfig:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override {item!r} is not key=value")
        cfg = _merge_strict(cfg, OmegaConf.from_dotlist([item]), f"command-line override {item!r}")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve config {name!r}: {err}") from err
    check_ranges(cfg)
    return cfg


def _at_least(low):
    return f"at least {low}", lambda v: v >= low


def _between(low, high, closed_high=True):
    return (f"in [{low}, {high}{']' if closed_high else ')'}",
            lambda v: low <= v <= high if closed_high else low <= v < high)


# Ranges of the numbers a run uses; bounds that only guard against nonsense (2e9 classes would allocate a
# 256 GB head) are generous.
RANGES = {
    "model.adapter_ratio": ("in (0, 1]", lambda v: 0 < v <= 1),
    "model.mlp_adapter_scale": _at_least(0),
    "model.drop_path_rate": _between(0, 1, closed_high=False),
    "model.head_dropout": _between(0, 1, closed_high=False),
    "model.tubelet_size": _at_least(1),
    "data.num_classes": _between(1, 1_000_000),
    "data.num_frames": _between(1, 1024),
    "data.frame_interval": _at_least(1),
    "data.input_size": _between(8, 4096),
    "data.short_side": _between(8, 8192),
    "data.test_clips": _between(1, 100),
    "data.max_views_per_forward": _at_least(1),
    "data.randaugment_ops": _between(0, 16),
    "data.random_erasing": _between(0, 1),
    "data.num_workers": _between(0, 256),
    "data.max_read_attempts": _between(1, 1000),
    "data.fraction": ("in (0, 1]", lambda v: 0 < v <= 1),
    "schedule.epochs": _between(1, 100_000),
    "schedule.warmup_epochs": _at_least(0),
    "schedule.lr": ("a finite number above 0", lambda v: 0 < v < math.inf),
    "schedule.min_lr": _at_least(0),
    "schedule.warmup_lr_init": _at_least(0),
    "schedule.backbone_lr_mult": _at_least(0),
    "schedule.temporal_lr_mult": _at_least(0),
    "schedule.weight_decay": _at_least(0),
    "schedule.batch_size": _between(1, 1_000_000),
    "schedule.accumulation_steps": _between(1, 100_000),
    "schedule.clip_grad": ("above 0 (or null)", lambda v: v > 0),
    "schedule.label_smoothing": _between(0, 1, closed_high=False),
    "schedule.mixup": _at_least(0),
    "schedule.cutmix": _at_least(0),
    "schedule.mixup_prob": _between(0, 1),
    "schedule.mixup_switch_prob": _between(0, 1),
    "seed": _between(0, 2**32 - 1),
    "eval_every": _at_least(1),
    "log_every": _at_least(1),
    "image_pretrain.steps": _at_least(1),
    "image_pretrain.batch_size": _at_least(1),
    "image_pretrain.lr": ("a finite number above 0", lambda v: 0 < v < math.inf),
    "image_pretrain.warmup_steps": _at_least(0),
    "image_pretrain.train_images": _at_least(1),
    "image_pretrain.val_images": _at_least(1),
    "image_pretrain.mask_ratio": _between(0, 1, closed_high=False),
    "image_pretrain.reconstruction_weight": _at_least(0),
    "image_pretrain.figure_weight": _at_least(0),
    "image_pretrain.label_weight": _at_least(0),
    "demo.rounds": _between(1, 100_000),
    "demo.local_epochs": _between(1, 100_000),
    "local_federation.sites": _between(1, 10_000),
    "local_federation.alpha": ("above 0", lambda v: v > 0),
    "local_federation.classes_per_client": _at_least(1),
}


def check_ranges(cfg: DictConfig) -> None:
    """Every number of `RANGES` is finite and in its range; the first that is not is named."""
    for key, (expected, ok) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range: expected {expected}")
    for key in ("data.crop_scale", "schedule.betas"):
        pair = OmegaConf.select(cfg, key)
        if pair is not None and (len(pair) != 2 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in pair)):
            raise ConfigError(f"{key}={list(pair)!r}: expected two numbers in [0, 1]")


def load_config(name: str, overrides: list[str] | tuple[str, ...] = (), bundled_only: bool = False) -> DictConfig:
    """base.yaml, then the named config file and its bases, then `key=value` overrides; every key declared.
    `bundled_only` accepts only the name of a config shipped in configs/ (what a deployed site loads)."""
    cfg = _strict(OmegaConf.create(_base_defaults()))
    for source, layer in _read_layers(resolve_config_path(name, bundled_only)):
        cfg = _merge_strict(cfg, layer, source)
    return _apply_overrides(cfg, overrides, name)


def config_from_dict(values: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "stored config"):
    """A config stored whole (in a checkpoint's metadata), with `key=value` overrides as strict as `load_config`'s."""
    return _apply_overrides(_strict(OmegaConf.create(values)), overrides, source)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def progress_options(show: bool) -> dict:
    """tqdm keyword arguments for a bar that shows when `show`: `disable` is passed only to hide it, because an
    explicit argument overrides tqdm's environment settings (TQDM_DISABLE=1 must hide every bar)."""
    return {} if show else {"disable": True}
