"""bf16 training (trainer.precision=bf16): the forward under bf16 autocast; each norm layer in the
precision its kernel keeps its statistics in.

Autocast runs convolutions and linear layers in bf16 and leaves the rest in its inputs' dtype.
On CPU, torch's own norm kernels (batch_norm, group_norm, layer_norm) take bf16 activations and
accumulate their statistics in fp32, with fp32 parameters and running averages
(tests/test_precision.py checks this against the fp32 layer): they get bf16 input. (On CUDA,
autocast itself runs group_norm and layer_norm in fp32; not checked here, no GPU test covers it.)
The project's layers that compute statistics with plain tensor ops (Batch Renorm, FRN, EvoNorm)
would reduce in bf16, so their input is cast to fp32 (a forward pre-hook). A layer says which it is
by a class attribute `native_bf16`; torch's classes are in NATIVE_BF16; a norm class that says
nothing gets fp32. Master weights stay fp32 (autocast casts copies), and the loss is taken on fp32
logits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from torch import Tensor, nn

from normexp.nn.layers import EvoNormS02d, FilterResponseNorm2d

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FilterResponseNorm2d, EvoNormS02d)
NATIVE_BF16 = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)  # exact classes: torch's kernels


def native_bf16(module: nn.Module) -> bool:
    """Whether `module`'s kernel takes bf16 input and keeps its statistics in fp32: its class's own
    `native_bf16`, else whether it is one of torch's classes (NATIVE_BF16; a subclass must say)."""
    declared = type(module).__dict__.get("native_bf16")
    return declared if declared is not None else type(module) in NATIVE_BF16


def _to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def set_norm_precision(model: nn.Module) -> nn.Module:
    """Every norm layer of `model` that is not `native_bf16` casts its input to fp32 first (a
    forward pre-hook); in place."""
    for module in model.modules():
        if isinstance(module, NORM_LAYERS) and not native_bf16(module):
            module.register_forward_pre_hook(_to_fp32)
    return model


def autocast(precision: Optional[str], device: torch.device) -> AbstractContextManager[Any]:
    """The forward's precision context: nothing for fp32 (null), bf16 autocast for `bf16` (without
    its cast cache, which a CUDA graph cannot hold)."""
    if precision is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
