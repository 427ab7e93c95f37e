"""SGD with a linearly scaled learning rate, and a per-step warm-up + decay schedule."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import cast

import torch
from omegaconf import DictConfig
from torch import nn

from normexp.config import OptimConfig, plain


def scaled_lr(cfg: OptimConfig, step_batch: int) -> float:
    """Linear scaling in the images per optimizer step: lr x step_batch / ref_batch_size (GN paper:
    0.1 x 8N / 256 for N images on each of 8 GPUs)."""
    return cfg.lr * step_batch / cfg.ref_batch_size


def build_optimizer(model: nn.Module, cfg: OptimConfig, step_batch: int) -> torch.optim.SGD:
    """SGD; weight decay on conv/linear weights, and on norm scales and biases only if asked."""
    decay = [p for p in model.parameters() if p.ndim > 1 or cfg.decay_norm_and_bias]
    no_decay = [p for p in model.parameters() if not (p.ndim > 1 or cfg.decay_norm_and_bias)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.SGD(
        groups, lr=scaled_lr(cfg, step_batch), momentum=cfg.momentum, nesterov=cfg.nesterov,
        foreach=True,
    )


def lr_factor(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base LR at a given optimizer step: linear warm-up, then the schedule."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        total = epochs * steps_per_epoch
        progress = (step - warmup) / max(1.0, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor`, reading the schedule from a plain copy of `cfg`: an OmegaConf
    node read at every step costs the host as much time as a small GPU step."""
    settings = cast(OptimConfig, SimpleNamespace(**plain(cfg))) if isinstance(cfg, DictConfig) else cfg
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(settings, step, steps_per_epoch, epochs)
    )
