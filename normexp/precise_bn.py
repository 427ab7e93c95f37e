"""Precise BN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"; fvcore's `update_bn_stats`):
replace BatchNorm's exponential running averages by exact averages over many training batches.

The model runs in train mode, so each layer sees the features training produces (every BN-type
layer normalizes as in training: batch statistics, per device, renormalized), without gradients.
Each BN-type layer's statistics are those of its whole input batch (the large batch fed here, not
per device), as BatchNorm2d would store them with momentum 1 (unbiased variance), averaged with
equal weight over the batches.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import torch
from torch import Tensor, nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable[Tensor], num_batches: int) -> None:
    """Set every BN-type layer's running mean and variance (in place) to the average over the first
    `num_batches` of `batches` (model inputs) of its input's batch mean and unbiased variance per
    channel. Parameters, momentum, `num_batches_tracked` and every module's train/eval mode are left
    as they were; the layers' own running updates are switched off meanwhile (momentum 0). A layer
    called several times per forward averages over all its calls; one never called is unchanged.
    A model without BN-type layers is left alone without reading `batches`."""
    layers = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not layers:
        return
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    sums: dict[nn.Module, tuple[Tensor, Tensor, int]] = {}

    def accumulate(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].transpose(0, 1).flatten(1).float()  # (C, everything else)
        var, mean = torch.var_mean(x, dim=1, correction=1)
        if module in sums:
            mean_sum, var_sum, calls = sums[module]
            mean, var, calls = mean_sum + mean, var_sum + var, calls + 1
        else:
            calls = 1
        sums[module] = (mean, var, calls)

    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        model.train()
        seen = 0
        for x in itertools.islice(batches, num_batches):
            model(x)
            seen += 1
        if seen < num_batches:
            raise ValueError(f"precise BN needs {num_batches} batches, got {seen}")
    finally:
        for hook in hooks:
            hook.remove()
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
        for m, training in modes:
            m.training = training
    for m, (mean_sum, var_sum, calls) in sums.items():
        m.running_mean.copy_(mean_sum / calls)
        m.running_var.copy_(var_sum / calls)
