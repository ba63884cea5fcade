"""aim_core: the AIM video model over frozen image transformers, shared by centralized and federated training."""

from aim_core.config import load_config
from aim_core.model import build_model
from aim_core.trainable import load_trainable, save_trainable, trainable_names, trainable_state

__all__ = ["build_model", "load_config", "load_trainable", "save_trainable", "trainable_names", "trainable_state"]
