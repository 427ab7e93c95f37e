"""Precise BN (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"; fvcore's `update_bn_stats`):
replace BatchNorm's exponential running averages by statistics computed over many training batches.

The model runs in train mode, so each layer sees the features training produces (every BN-type
layer normalizes as in training: batch statistics, per device, renormalized), without gradients.
Two estimators:
- `population_statistics` (fvcore's default, what the evaluations and FrozenBN use): per channel,
  the mean and variance of the layer's input over all the images fed, E[x] and E[x^2] - E[x]^2
  (the population-variance estimator E[mu_B^2 + var_B] - E[mu_B]^2, exact for any split into
  batches or devices), with the unbiased correction for the number of values.
- `recompute_batchnorm_statistics` (kept for the committed `bn-pbn` runs of `norm=bn_precise`): the
  average over batches of each batch's mean and unbiased variance, each batch normalized as one;
  small batches bias its variance low (it leaves out the spread of the batch means).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, cast

import torch
from torch import Tensor, nn

from normexp.nn.traits import norm_traits

Accumulate = Callable[[nn.Module, Tensor], None]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of `model` with the `running_statistics` trait (normexp.nn.traits) that keep them."""
    return [m for m in model.modules() if (traits := norm_traits(m)) and traits.running_statistics
            and m.track_running_stats]


@contextmanager
def _observing(model: nn.Module, layers: list[nn.Module], accumulate: Accumulate) -> Iterator[None]:
    """Train mode without running updates (momentum 0), `accumulate(layer, its input)` on every call;
    modes, momentum and step counters restored afterwards."""
    saved = [(m.momentum, cast(Tensor, m.num_batches_tracked).clone()) for m in layers]
    modes = [(m, m.training) for m in model.modules()]
    hooks = [m.register_forward_pre_hook(lambda module, inputs: accumulate(module, inputs[0])) for m in layers]
    try:
        for m in layers:
            cast(Any, m).momentum = 0.0  # a float: nn.Module types its attributes as tensors and modules
        model.train()
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for m, (momentum, tracked) in zip(layers, saved):
            m.momentum = momentum
            cast(Tensor, m.num_batches_tracked).copy_(tracked)
        for m, training in modes:
            m.training = training


def _feed(model: nn.Module, batches: Iterable[Tensor], num_batches: int) -> None:
    seen = 0
    for x in itertools.islice(batches, num_batches):
        model(x)
        seen += 1
    if seen < num_batches:
        raise ValueError(f"precise BN needs {num_batches} batches, got {seen}")


@torch.no_grad()
def population_statistics(model: nn.Module, batches: Iterable[Tensor], num_batches: int) -> None:
    """Set every BN-type layer's running mean and variance (in place) to the mean and unbiased
    variance per channel of its input over the first `num_batches` of `batches` (model inputs), the
    model in train mode (training's own per-device normalization upstream). Parameters, momentum,
    `num_batches_tracked` and modes are left as they were. A model without BN-type layers is left
    alone without reading `batches`."""
    layers = batch_norm_layers(model)
    if not layers:
        return
    sums: dict[nn.Module, list[Tensor]] = {}

    def accumulate(module: nn.Module, x: Tensor) -> None:
        values = x.transpose(0, 1).flatten(1).double()  # (C, everything else)
        moments = [values.sum(1), values.square().sum(1), torch.tensor(float(values.shape[1]), dtype=torch.float64)]
        sums[module] = [a + b for a, b in zip(sums[module], moments)] if module in sums else moments

    with _observing(model, layers, accumulate):
        _feed(model, batches, num_batches)
    for m, (total, squares, count) in sums.items():
        mean = total / count
        var = (squares / count - mean.square()).clamp(min=0.0) * (count / (count - 1))
        cast(Tensor, m.running_mean).copy_(mean)
        cast(Tensor, m.running_var).copy_(var)


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable[Tensor], num_batches: int) -> None:
    """Set every BN-type layer's running mean and variance (in place) to the average over the first
    `num_batches` of `batches` of its input's batch mean and unbiased variance per channel (the
    per-batch-variance estimator). Otherwise as `population_statistics`; a layer called several
    times per forward averages over all its calls; one never called is unchanged."""
    layers = batch_norm_layers(model)
    if not layers:
        return
    sums: dict[nn.Module, tuple[Tensor, Tensor, int]] = {}

    def accumulate(module: nn.Module, x: Tensor) -> None:
        var, mean = torch.var_mean(x.transpose(0, 1).flatten(1).float(), dim=1, correction=1)
        if module in sums:
            mean_sum, var_sum, calls = sums[module]
            sums[module] = (mean_sum + mean, var_sum + var, calls + 1)
        else:
            sums[module] = (mean, var, 1)

    with _observing(model, layers, accumulate):
        _feed(model, batches, num_batches)
    for m, (mean_sum, var_sum, calls) in sums.items():
        cast(Tensor, m.running_mean).copy_(mean_sum / calls)
        cast(Tensor, m.running_var).copy_(var_sum / calls)
