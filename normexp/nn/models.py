"""The CIFAR ResNet of He et al. (2016), depth 6n+2, with an injected norm layer factory.

Every norm layer the factory builds must declare its traits (normexp.nn.traits); one that includes
its activation (e.g. FRN's TLU) gets no ReLU right after it; a `WeightStandardized` factory has
every convolution's weight standardized.
"""

from __future__ import annotations

from typing import Any, Mapping, cast

from torch import Tensor, nn

from normexp.nn.layers import standardize_conv_weights
from normexp.nn.norms import NormFactory, WeightStandardized, build_norm, norm_before_addition
from normexp.nn.traits import traits_of


def make_norm(factory: NormFactory, channels: int, before_addition: bool = False) -> nn.Module:
    """A norm layer of `factory` (the one it puts right before a residual addition if asked);
    ConfigError if its class declares no traits."""
    layer = norm_before_addition(factory, channels) if before_addition else factory(channels)
    traits_of(layer)
    return layer


def activation_after(norm: nn.Module) -> nn.Module:
    """The ReLU that follows `norm`, or Identity if `norm` applies its own nonlinearity."""
    return nn.Identity() if traits_of(norm).includes_activation else nn.ReLU(inplace=True)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norms; a 1x1 projection shortcut where the shape changes."""

    routes_channels = True  # packing: its own computation is its layers' (normexp.nn.packing)

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = make_norm(norm_layer, planes)
        self.act1 = activation_after(self.norm1)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm2 = make_norm(norm_layer, planes, before_addition=True)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                make_norm(norm_layer, planes, before_addition=True)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: a 3x3 stem, three stages of n blocks at widths w, 2w, 4w."""

    routes_channels = True

    def __init__(
        self,
        norm_layer: NormFactory,
        depth: int,
        base_width: int,
        num_classes: int,
        zero_init_residual: bool,
    ) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        widths = [base_width, 2 * base_width, 4 * base_width]
        stem_norm = make_norm(norm_layer, widths[0])
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), stem_norm,
                                  activation_after(stem_norm))
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, planes in enumerate(widths):
            blocks = []
            for b in range(blocks_per_stage):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, norm_layer))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self._init_weights(zero_init_residual)
        if isinstance(norm_layer, WeightStandardized):
            standardize_conv_weights(self)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)  # a norm without learned scale and shift (affine=False) has none
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock) and getattr(module.norm2, "weight", None) is not None:
                    nn.init.zeros_(cast(Tensor, module.norm2.weight))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def build_model(model: Mapping[str, Any], norm: Mapping[str, Any]) -> CifarResNet:
    """The `model` config's ResNet with the `norm` config's layers; bad norm settings raise ConfigError."""
    return CifarResNet(build_norm(norm), depth=model["depth"], base_width=model["base_width"],
                       num_classes=model["num_classes"], zero_init_residual=model["zero_init_residual"])
