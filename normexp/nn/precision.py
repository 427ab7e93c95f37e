"""bf16 training (trainer.precision=bf16): the forward under bf16 autocast; each norm layer in the
precision its kernel keeps its statistics in.

Autocast runs convolutions and linear layers in bf16 and leaves the rest in its inputs' dtype.
On CPU, torch's own norm kernels (batch_norm, group_norm, layer_norm) take bf16 activations and
accumulate their statistics in fp32, with fp32 parameters and running averages
(tests/test_precision.py checks this against the fp32 layer): they get bf16 input. (On CUDA,
autocast itself runs group_norm and layer_norm in fp32; not checked here, no GPU test covers it.)
The project's layers that compute statistics with plain tensor ops (Batch Renorm, FRN, EvoNorm)
would reduce in bf16, so their input is cast to fp32 (a forward pre-hook). Which is which is the
layer's `native_bf16` trait (normexp.nn.traits). Master weights stay fp32 (autocast casts copies),
and the loss is taken on fp32 logits.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional

import torch
from torch import Tensor, nn

from normexp.nn.traits import norm_traits


def _to_fp32(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def set_norm_precision(model: nn.Module) -> nn.Module:
    """Every norm layer of `model` without the `native_bf16` trait casts its input to fp32 first (a
    forward pre-hook); in place."""
    for module in model.modules():
        traits = norm_traits(module)
        if traits is not None and not traits.native_bf16:
            module.register_forward_pre_hook(_to_fp32)
    return model


def autocast(precision: Optional[str], device: torch.device) -> AbstractContextManager[Any]:
    """The forward's precision context: nothing for fp32 (null), bf16 autocast for `bf16` (without
    its cast cache, which a CUDA graph cannot hold)."""
    if precision is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
