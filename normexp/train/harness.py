"""What every training loop does to a pack's model before its first step, in one place: the
conductor's runs and the benches (scripts/) train the same model."""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from normexp.nn.devices import split_batch_statistics
from normexp.nn.precision import set_norm_precision
from normexp.train import runtime


def prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device) -> torch.memory_format:
    """In place: `data.devices` virtual devices for its batch-dependent layers, each norm in its
    kernel's precision under `trainer.precision`, moved to `device` in the memory layout
    `runtime.channels_last` allows (runtime.memory_format), which is returned."""
    split_batch_statistics(model, cfg.data.devices)
    if cfg.trainer.precision is not None:
        set_norm_precision(model)
    fmt = runtime.memory_format(cfg.runtime.channels_last, model, device)
    model.to(device, memory_format=fmt)
    return fmt
