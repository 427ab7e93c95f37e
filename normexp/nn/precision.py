"""bf16 training (trainer.precision=bf16): the forward under bf16 autocast, the norm layers in fp32.

Autocast runs convolutions and linear layers in bf16 and leaves the rest in its inputs' dtype, so
a norm layer whose input is cast back to fp32 computes its statistics and keeps its running
averages in fp32; master weights stay fp32 (autocast casts copies), and the loss is taken on fp32
logits. Which layers are norms: NORM_LAYERS (torch's and the project's norm classes, packed and
per-device variants included, being subclasses or the same classes).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from torch import Tensor, nn

from normexp.nn.layers import EvoNormS02d, FilterResponseNorm2d

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FilterResponseNorm2d, EvoNormS02d)


def _to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def keep_norms_fp32(model: nn.Module) -> nn.Module:
    """Every norm layer of `model` casts its input to fp32 first (a forward pre-hook); in place."""
    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            module.register_forward_pre_hook(_to_fp32)
    return model


def autocast(precision: Optional[str], device: torch.device) -> AbstractContextManager[Any]:
    """The forward's precision context: nothing for fp32 (null), bf16 autocast for `bf16` (without
    its cast cache, which a CUDA graph cannot hold)."""
    if precision is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
