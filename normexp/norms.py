"""The registry of normalization layers.

A norm is a function registered under a name; its keyword arguments are the fields of its YAML
in `conf/norm/`. It returns a factory `channels -> nn.Module` that the model calls once per norm
layer (torchvision's `norm_layer` style). To add a norm, write one such function here and one
YAML file `conf/norm/<name>.yaml` with `name: <name>` and its arguments.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional

from torch import nn

from normexp.config import ConfigError

NormFactory = Callable[[int], nn.Module]
NormBuilder = Callable[..., NormFactory]

NORMS: dict[str, NormBuilder] = {}


def register_norm(name: str) -> Callable[[NormBuilder], NormBuilder]:
    """Decorator: make a norm builder available as `norm=<name>`."""

    def add(builder: NormBuilder) -> NormBuilder:
        NORMS[name] = builder
        return builder

    return add


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _group_norm(channels: int, groups: int, setting: str) -> nn.GroupNorm:
    if channels % groups:
        raise ConfigError(
            f"{setting} does not fit a layer with {channels} channels: the group count must divide "
            f"{channels}; valid group counts for this width: {', '.join(map(str, divisors(channels)))}"
        )
    return nn.GroupNorm(groups, channels)


@register_norm("bn")
def batch_norm(momentum: float = 0.1) -> NormFactory:
    """BatchNorm2d: statistics of the current batch in training, running averages in eval."""
    return lambda channels: nn.BatchNorm2d(channels, momentum=momentum)


@register_norm("gn")
def group_norm(groups: Optional[int] = None, channels_per_group: Optional[int] = None) -> NormFactory:
    """GroupNorm with a fixed group count G, or a fixed number of channels per group (GN Table 3)."""
    if (groups is None) == (channels_per_group is None):
        raise ConfigError(
            f"norm=gn needs exactly one of norm.groups or norm.channels_per_group "
            f"(got groups={groups}, channels_per_group={channels_per_group})"
        )
    if groups is not None:
        if not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"norm.groups={groups!r} is invalid: must be an integer >= 1")
        return lambda channels: _group_norm(channels, groups, f"norm.groups={groups}")
    if not isinstance(channels_per_group, int) or channels_per_group < 1:
        raise ConfigError(f"norm.channels_per_group={channels_per_group!r} is invalid: must be an integer >= 1")

    def make(channels: int) -> nn.Module:
        if channels % channels_per_group:
            raise ConfigError(
                f"norm.channels_per_group={channels_per_group} does not fit a layer with {channels} "
                f"channels; valid values for this width: {', '.join(map(str, divisors(channels)))}"
            )
        return nn.GroupNorm(channels // channels_per_group, channels)

    return make


@register_norm("ln")
def layer_norm() -> NormFactory:
    """LayerNorm over (C, H, W) with a per-channel affine: GroupNorm with one group."""
    return lambda channels: nn.GroupNorm(1, channels)


@register_norm("in")
def instance_norm() -> NormFactory:
    """InstanceNorm with a per-channel affine: GroupNorm with one channel per group."""
    return lambda channels: nn.GroupNorm(channels, channels)


@register_norm("none")
def no_norm() -> NormFactory:
    """No normalization (identity)."""
    return lambda channels: nn.Identity()


def build_norm(spec: Mapping[str, Any]) -> NormFactory:
    """Turn a `norm` config (`name` plus the builder's arguments) into a factory; check the fields."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in NORMS:
        raise ConfigError(f"norm.name={name!r} is unknown; registered norms: {', '.join(sorted(NORMS))}")
    builder = NORMS[name]
    allowed = list(inspect.signature(builder).parameters)
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConfigError(
            f"norm.{unknown[0]} is not a setting of norm={name}; its settings: {', '.join(allowed) or 'none'}"
        )
    return builder(**spec)
