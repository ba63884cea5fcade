"""Device and numeric precision: bf16 autocast on GPUs, fp32 on the CPU, fp16 with a GradScaler on request."""

from __future__ import annotations

import contextlib

import torch

from aim_core.config import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"schedule.precision={precision!r}; choose auto, fp32, bf16 or fp16")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])
