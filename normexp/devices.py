"""Virtual devices: the GN paper's protocol of N images per GPU on several GPUs, on one device.

A step trains on `devices x batch_size` images; BatchNorm normalizes each device's `batch_size`
images with their own statistics, as unsynchronized per-GPU BN does, and Batch Renormalization
(normexp.layers.BatchRenorm2d) renormalizes them so too. Batch-independent norms are unaffected.
Running statistics: each device updates them from its own batch, and the model keeps the average
of the devices' updates (their running estimates averaged). With every device's buffers being an
unbiased running estimate, this has the same expectation as keeping one device's (what
Caffe2/Detectron, the GN paper's code, and PyTorch DDP with `broadcast_buffers` evaluate with),
with 1/devices of its variance. The state dict is plain BatchNorm2d's (BatchRenorm2d's).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normexp.layers import BatchRenorm2d, update_running_stats


class PerDeviceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training batch is `devices` consecutive chunks, each normalized alone."""

    def __init__(self, source: nn.BatchNorm2d, devices: int) -> None:
        super().__init__(source.num_features, source.eps, source.momentum, source.affine, source.track_running_stats)
        self.load_state_dict(source.state_dict())
        self.devices = devices

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.devices == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.devices:
            raise ValueError(f"a batch of {n} images does not split into {self.devices} devices")
        chunks = x.view(self.devices, n // self.devices, c, h, w)
        var, mean = torch.var_mean(chunks, dim=(1, 3, 4), unbiased=False, keepdim=True)
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.view(1, 1, c, 1, 1)
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias.view(1, 1, c, 1, 1)
        if self.track_running_stats:
            update_running_stats(self, mean.view(self.devices, c), var.view(self.devices, c),
                                 count=(n // self.devices) * h * w)
        return (chunks * scale + shift).reshape(n, c, h, w)


def split_batch_statistics(model: nn.Module, devices: int) -> nn.Module:
    """Replace every BatchNorm2d in `model` (in place) by its per-device version, and set every
    BatchRenorm2d's `devices`; 1 = unchanged."""
    if devices == 1:
        return model
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, PerDeviceBatchNorm2d(child, devices))
        elif isinstance(child, BatchRenorm2d):
            child.devices = devices
        else:
            split_batch_statistics(child, devices)
    return model
