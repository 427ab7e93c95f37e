"""Layers for the small-batch fixes the registry offers (normexp.nn.norms).

BatchRenorm2d (Ioffe 2017) corrects each batch's statistics towards the running ones;
WeightStandardization (Qiao et al. 2019) standardizes each convolution filter;
FilterResponseNorm2d (Singh & Krishnan 2019) and EvoNormS02d (Liu et al. 2020) normalize each
sample alone and carry their own nonlinearity (the model puts no ReLU directly after them). Each
layer declares its own rules: its traits (`norm_traits`, normexp.nn.traits), how it widens for packed runs
(`packed(members)`: per-channel tensors of shape (C,) concatenated along dimension 0, like
BatchNorm2d's) and, if it normalizes over the batch, how it splits per virtual device
(`per_device(devices)`, normexp.nn.devices).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from normexp.nn.traits import NormTraits


@torch.no_grad()
def update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """BatchNorm2d's running update from D devices' batch statistics `mean`, `var` (D, C), each
    device's biased variance over `count` values; the devices' updates are averaged."""
    tracked = cast(Tensor, bn.num_batches_tracked)  # its buffers: a BatchNorm2d that tracks running statistics
    tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
    unbiased = var * (count / max(1, count - 1))
    cast(Tensor, bn.running_mean).lerp_(mean.mean(0), momentum)
    cast(Tensor, bn.running_var).lerp_(unbiased.mean(0), momentum)


def renorm_limits(images: Tensor, rmax: float, dmax: float, warmup_images: int) -> tuple[Tensor, Tensor]:
    """Batch Renormalization's r_max and d_max after a device has trained on `images` images: linear
    from (1, 0) to (rmax, dmax) over `warmup_images`, then constant (tensors: no host sync under
    torch.compile)."""
    seen = images.float()
    progress = (seen / warmup_images).clamp(max=1.0) if warmup_images else torch.ones_like(seen)
    return 1.0 + (rmax - 1.0) * progress, dmax * progress


@torch.library.custom_op("normexp::renorm_correction", mutates_args=())
def renorm_correction(mean: Tensor, std: Tensor, running_mean: Tensor, running_var: Tensor, step: Tensor,
                      images_per_step: int, rmax: float, dmax: float, warmup_images: int,
                      eps: float) -> tuple[Tensor, Tensor]:
    """Batch Renormalization's r and d for batch statistics `mean`, `std` (..., C, 1, 1).

    An opaque op, so that torch.compile saves r and d for the backward: the min-cut partitioner
    would otherwise recompute them there from the running statistics and step counter, which the
    forward has updated in place by then, and the gradients would be wrong (pytorch/pytorch#197039).
    """
    r_max, d_max = renorm_limits(step * images_per_step, rmax, dmax, warmup_images)
    running_std = torch.sqrt(running_var + eps).view(-1, 1, 1)
    r = torch.clamp(std / running_std, 1.0 / r_max, r_max)
    d = torch.clamp((mean - running_mean.view(-1, 1, 1)) / running_std, -d_max, d_max)
    return r, d


@renorm_correction.register_fake
def _(mean: Tensor, std: Tensor, *args: object) -> tuple[Tensor, Tensor]:
    return torch.empty_like(std), torch.empty_like(mean)


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch Renormalization (Ioffe 2017): in training y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
    with r = clip(sigma_B / sigma, 1/r_max, r_max) and d = clip((mu_B - mu) / sigma, -d_max, d_max)
    held constant in backprop (mu, sigma: the running statistics, updated as BatchNorm2d's); eval as
    BatchNorm2d. r_max ramps linearly from 1 to `rmax` and d_max from 0 to `dmax` while each device
    trains on its first `warmup_images` images (training forwards, counted by `num_batches_tracked`,
    times the images per device; step 0 is plain BN). Counting images rather than steps puts the
    ramp at the same share of training for every batch size at a fixed number of epochs.
    Deviations from the paper: one ramp for both limits, from step 0 (the paper holds plain BN for
    5k steps, then relaxes r_max over 40k and d_max over 25k), and sigma = sqrt(running_var + eps)
    with BatchNorm2d's variance update (the paper averages sigma itself).

    With `devices` > 1 the batch is that many consecutive chunks, each renormalized with its own
    statistics (the per-device protocol, normexp.nn.devices); the running update is their average.
    """

    # its statistics are tensor ops in the input's dtype: fp32 input under bf16
    norm_traits = NormTraits(batch_dependent=True, running_statistics=True, corrects_statistics=True)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, rmax: float = 3.0,
                 dmax: float = 5.0, warmup_images: int = 6250, devices: int = 1) -> None:
        super().__init__(num_features, eps, momentum)
        self.rmax, self.dmax, self.warmup_images, self.devices = rmax, dmax, warmup_images, devices

    def packed(self, members: int) -> BatchRenorm2d:
        """A fresh layer for `members` packed runs (normexp.nn.packing): one set of channels each."""
        return BatchRenorm2d(self.num_features * members, self.eps, self.momentum, self.rmax, self.dmax,
                             self.warmup_images, self.devices)

    def per_device(self, devices: int) -> BatchRenorm2d:
        """This layer, renormalizing each of `devices` consecutive chunks of its batch alone."""
        self.devices = devices
        return self

    def batch_statistics_only(self) -> None:
        """Normalize by the batch's own statistics, uncorrected (r = 1, d = 0), from now on."""
        self.rmax, self.dmax = 1.0, 0.0

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_images={self.warmup_images}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % self.devices:
            raise ValueError(f"a batch of {n} images does not split into {self.devices} devices")
        chunks = x.view(self.devices, n // self.devices, c, h, w)
        var, mean = torch.var_mean(chunks, dim=(1, 3, 4), correction=0, keepdim=True)
        std = torch.sqrt(var + self.eps)
        r, d = renorm_correction(mean.detach(), std.detach(), self.running_mean, self.running_var,
                                 self.num_batches_tracked, n // self.devices, self.rmax, self.dmax,
                                 self.warmup_images, self.eps)
        update_running_stats(self, mean.view(self.devices, c), var.view(self.devices, c),
                             count=(n // self.devices) * h * w)
        scale = r / std * self.weight.view(1, 1, c, 1, 1)
        shift = (d - mean * r / std) * self.weight.view(1, 1, c, 1, 1) + self.bias.view(1, 1, c, 1, 1)
        return (chunks * scale + shift).reshape(n, c, h, w)


class WeightStandardization(nn.Module):
    """Weight Standardization (Qiao et al. 2019) as a parametrization of a conv weight (O, I/g, kh, kw):
    each output filter minus its mean, over its standard deviation (biased, eps inside the root)."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        var, mean = torch.var_mean(weight, dim=(1, 2, 3), correction=0, keepdim=True)
        return (weight - mean) * torch.rsqrt(var + self.eps)


def standardize_conv_weights(model: nn.Module) -> nn.Module:
    """Register WeightStandardization on every Conv2d's weight of `model` (in place)."""
    for module in list(model.modules()):
        if isinstance(module, nn.Conv2d):
            parametrize.register_parametrization(module, "weight", WeightStandardization())
    return model


class FilterResponseNorm2d(nn.Module):
    """FRN with TLU (Singh & Krishnan 2019): z = max(gamma * x / sqrt(nu2 + eps) + beta, tau), with
    nu2 the mean of x^2 over (H, W) of each sample and channel; per-channel gamma, beta, tau.

    The TLU is the layer's activation: the model applies no ReLU right after it (a ReLU there would
    make it max(y, max(tau, 0)), and tau, starting at 0, would get no gradient). By default the TLU
    applies at every norm, also at the last one of a block and the shortcut's, right before the
    residual addition (whose ReLU the model keeps); `tlu=False` gives the layer without it (no tau),
    what the model puts there with norm.skip_tlu_before_addition (timm's apply_act=False).
    """

    # its statistics are tensor ops in the input's dtype: fp32 input under bf16
    norm_traits = NormTraits(includes_activation=True)

    def __init__(self, num_features: int, eps: float = 1e-6, tlu: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.tlu = num_features, eps, tlu
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features)) if tlu else None

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, tlu={self.tlu}"

    def packed(self, members: int) -> FilterResponseNorm2d:
        """A fresh layer for `members` packed runs: one set of channels each (it is per channel)."""
        return FilterResponseNorm2d(self.num_features * members, self.eps, self.tlu)

    def forward(self, x: Tensor) -> Tensor:
        nu2 = x.square().mean(dim=(2, 3), keepdim=True)
        y = x * torch.rsqrt(nu2 + self.eps) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return torch.maximum(y, cast(Tensor, self.tau).view(1, -1, 1, 1)) if self.tlu else y  # tau: with the TLU


class EvoNormS02d(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020): y = x * sigmoid(v * x) / group_std(x) * gamma + beta, group_std the
    standard deviation over each sample's group of C/groups channels x H x W (biased, eps inside the
    root); per-channel v, gamma, beta. Batch-independent. The sigmoid gate is its activation: as for
    FilterResponseNorm2d, the model applies no ReLU right after it, and the gate applies at every
    norm, also before the residual addition.
    """

    # its statistics are tensor ops in the input's dtype: fp32 input under bf16
    norm_traits = NormTraits(includes_activation=True)

    def __init__(self, num_features: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.groups, self.eps = num_features, groups, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}"

    def packed(self, members: int) -> EvoNormS02d:
        """A fresh layer for `members` packed runs: one set of channels and groups each."""
        return EvoNormS02d(self.num_features * members, self.groups * members, self.eps)

    def forward(self, x: Tensor) -> Tensor:
        grouped = x.unflatten(1, (self.groups, -1))
        std = torch.sqrt(torch.var(grouped, dim=(2, 3, 4), correction=0, keepdim=True) + self.eps)
        gated = (x * torch.sigmoid(self.v.view(1, -1, 1, 1) * x)).unflatten(1, (self.groups, -1)) / std
        return gated.flatten(1, 2) * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
