"""Experiment configs: omegaconf YAML composed from bases, with strict keys.

`configs/base.yaml` declares every key and its default. An experiment file lists the
files it builds on under `_base_` (paths relative to itself, merged in order) and then
sets its own keys; `key=value` overrides from the command line come last. A key that
base.yaml does not declare is an error naming the key and where it came from, so a
typo never silently trains with a default.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
BASE_FILE = os.path.join(CONFIG_DIR, "base.yaml")
# Free-form sections whose keys are not declared in base.yaml.
OPEN_SECTIONS = ("model.backbone.overrides",)


class ConfigError(ValueError):
    pass


def resolve_config_path(name: str) -> str:
    """A path, or a config name looked up in the package's configs/ folder."""
    for candidate in (name, os.path.join(CONFIG_DIR, name), os.path.join(CONFIG_DIR, f"{name}.yaml")):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config {name!r} not found (neither a file nor a name in {CONFIG_DIR})")


def _read_layers(path: str, seen: tuple[str, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file's bases (recursively, in order) followed by the file itself."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: _base_ includes form a cycle")
    try:
        node = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from err
    bases = node.pop("_base_", [])
    layers = []
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file {base!r} not found")
        layers += _read_layers(base_path, seen + (path,))
    return layers + [(path, node)]


def _merge_strict(cfg: DictConfig, layer: DictConfig, source: str) -> DictConfig:
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
    return cfg


def load_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """base.yaml, then the named config file and its bases, then `key=value` overrides; every key declared."""
    cfg = _strict(OmegaConf.load(BASE_FILE))
    for source, layer in _read_layers(resolve_config_path(name)):
        cfg = _merge_strict(cfg, layer, source)
    return _apply_overrides(cfg, overrides, name)


def config_from_dict(values: dict, overrides: list[str] | tuple[str, ...] = (), source: str = "stored config"):
    """A config stored whole (in a checkpoint's metadata), with `key=value` overrides as strict as `load_config`'s."""
    return _apply_overrides(_strict(OmegaConf.create(values)), overrides, source)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
