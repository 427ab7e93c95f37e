"""Virtual devices: the GN paper's protocol of N images per GPU on several GPUs, on one device.

A step trains on `devices x batch_size` images; BatchNorm normalizes each device's `batch_size`
images with their own statistics, as unsynchronized per-GPU BN does, and Batch Renormalization
(normexp.nn.layers.BatchRenorm2d) renormalizes them so too: each batch-dependent layer declares how it
splits (`per_device`). Batch-independent norms are unaffected.
Running statistics: each device updates them from its own batch, and the model keeps the average
of the devices' updates (their running estimates averaged). With every device's buffers being an
unbiased running estimate, this has the same expectation as keeping one device's (what
Caffe2/Detectron, the GN paper's code, and PyTorch DDP with `broadcast_buffers` evaluate with),
with 1/devices of its variance. The state dict is plain BatchNorm2d's (BatchRenorm2d's).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normexp.errors import ConfigError
from normexp.nn.traits import BATCH_NORM, norm_traits, traits_of


class PerDeviceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training batch is `devices` consecutive chunks, each normalized alone."""

    norm_traits = BATCH_NORM  # torch's batch_norm kernel, chunk by chunk

    def __init__(self, source: nn.BatchNorm2d, devices: int) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine, source.track_running_stats)
        self.load_state_dict(source.state_dict())
        self.devices = devices

    def per_device(self, devices: int) -> PerDeviceBatchNorm2d:
        self.devices = devices
        return self

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.devices == 1:
            return super().forward(x)
        d = self.devices
        if x.shape[0] % d:
            raise ValueError(f"a batch of {x.shape[0]} images does not split into {d} devices")
        # each device's images are a view of the batch (its leading dimension, in either memory
        # layout); torch's fused kernel normalizes each, updating a running copy of its own
        momentum = self._momentum()
        running = [t.expand(d, -1).clone() if t is not None else None for t in (self.running_mean, self.running_var)]
        out = torch.cat([F.batch_norm(chunk, running[0][i] if running[0] is not None else None,
                                      running[1][i] if running[1] is not None else None,
                                      self.weight, self.bias, True, momentum, self.eps)
                         for i, chunk in enumerate(x.chunk(d))])
        if self.track_running_stats:
            with torch.no_grad():  # the average of the devices' own running updates
                cast(Tensor, self.running_mean).copy_(cast(Tensor, running[0]).mean(0))
                cast(Tensor, self.running_var).copy_(cast(Tensor, running[1]).mean(0))
        return out

    def _momentum(self) -> float:
        """BatchNorm2d's update rate, counting this step (momentum None: the cumulative average)."""
        if not self.track_running_stats:
            return 0.0
        tracked = cast(Tensor, self.num_batches_tracked)  # kept with the running statistics
        tracked.add_(1)
        return self.momentum if self.momentum is not None else 1.0 / float(tracked)


def batch_dependent(module: nn.Module) -> bool:
    """Whether a layer normalizes over the batch (its `batch_dependent` trait, normexp.nn.traits)."""
    traits = norm_traits(module)
    return traits is not None and traits.batch_dependent


def split_batch_statistics(model: nn.Module, devices: int) -> nn.Module:
    """Give every batch-dependent layer of `model` (in place) `devices` virtual devices: a layer
    that declares how (a `per_device(devices)` method returning the layer to use, as
    PerDeviceBatchNorm2d and normexp.nn.layers.BatchRenorm2d have) is asked; a plain BatchNorm2d
    becomes a PerDeviceBatchNorm2d. Any other batch-dependent layer (one without per_device) is
    refused when devices > 1: left alone it would normalize over every device's images and break
    the protocol without a word."""
    for name, child in model.named_children():
        if hasattr(child, "per_device"):
            replacement = cast(Any, child).per_device(devices)  # the layer's own method (duck-typed)
            traits_of(replacement)  # the layer that takes its place declares its traits too
            setattr(model, name, replacement)
        elif type(child) is nn.BatchNorm2d:
            if devices > 1:
                setattr(model, name, PerDeviceBatchNorm2d(child, devices))
        elif batch_dependent(child):
            if devices > 1:
                raise ConfigError(
                    f"data.devices={devices} cannot split a {type(child).__name__} layer per device: it normalizes "
                    f"over the batch but has no per_device(devices) method (see normexp.nn.devices); give it one "
                    f"or use data.devices=1")
        else:
            split_batch_statistics(child, devices)
    return model


def check_splittable(model: nn.Module, devices: int, batch_statistics: bool) -> None:
    """Raise ConfigError, before anything is written, if `model` holds a batch-dependent layer that
    does not declare its per-device split while `devices` > 1 or `batch_statistics` (the evaluation
    that normalizes test images in groups of data.batch_size: the `evaluation` config) needs it."""
    undeclared = [type(m).__name__ for m in model.modules()
                  if batch_dependent(m) and not hasattr(m, "per_device") and type(m) is not nn.BatchNorm2d]
    if undeclared and devices > 1:
        split_batch_statistics(copy.deepcopy(model), devices)  # raises, naming data.devices and the layer
    if undeclared and batch_statistics:
        raise ConfigError(f"evaluation.batch_statistics=true normalizes test images in groups of data.batch_size, "
                          f"but a {undeclared[0]} layer has no per_device(devices) method (see normexp.nn.devices): "
                          f"give it one or set evaluation.batch_statistics=false")
