"""The registry of normalization layers.

A norm is a function registered under a name; its keyword arguments are the fields of its YAML
in `conf/norm/`, which holds their defaults (an argument defaults to None in the signature only
where None means "absent" or "off"). It returns a factory `channels -> nn.Module` that the model calls once per norm
layer (torchvision's `norm_layer` style). To add a norm, write one such function here and one
YAML file `conf/norm/<name>.yaml` with `name: <name>` and its arguments. A `WeightStandardized`
factory also has the model standardize its convolutions' weights, a `BeforeAddition` one gives
the norms right before a residual addition from a factory of their own; a layer with a true
`includes_activation` trait (normexp.nn.traits) takes the place of the norm and of the ReLU after it.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, cast

from torch import nn

from normexp.errors import ConfigError
from normexp.nn.layers import BatchRenorm2d, EvoNormS02d, FilterResponseNorm2d

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


def _check_groups(channels: int, groups: int, setting: str) -> None:
    if channels % groups:
        raise ConfigError(
            f"{setting} does not fit a layer with {channels} channels: the group count must divide "
            f"{channels}; valid group counts for this width: {', '.join(map(str, divisors(channels)))}"
        )


def _check_group_count(groups: Any) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ConfigError(f"norm.groups={groups!r} is invalid: must be an integer >= 1")


def _group_norm(channels: int, groups: int, setting: str) -> nn.GroupNorm:
    _check_groups(channels, groups, setting)
    return nn.GroupNorm(groups, channels)


@dataclass(frozen=True)
class WeightStandardized:
    """A norm factory, called as the one it wraps, whose model also standardizes the weights of its
    convolutions (Weight Standardization, Qiao et al. 2019): WS belongs to the convs the model builds."""

    factory: NormFactory

    def __call__(self, channels: int) -> nn.Module:
        return self.factory(channels)


@register_norm("bn")
def batch_norm(momentum: float, precise_bn_batches: Optional[int] = None, precise_bn_batch_size: Optional[int] = None,
               freeze_after: Optional[float] = None, freeze_images: Optional[int] = None) -> NormFactory:
    """BatchNorm2d: statistics of the current batch in training, running averages in eval.

    With `precise_bn_batches` (and `precise_bn_batch_size`; norm=bn_precise, the committed `bn-pbn`
    runs), evaluation uses statistics recomputed over that many training batches of that many images,
    each normalized as one batch, instead of the running averages (bn_evaluation.LegacyPrecise, with
    normexp/nn/precise_bn.py). Every BN run is also evaluated with precise population statistics and
    with batch statistics (the `evaluation` config). With `freeze_after` (and `freeze_images`;
    norm=bn_frozen), FrozenBN: from the first epoch at or past that fraction of training on, BN
    normalizes with fixed population statistics computed at the switch from that many training
    images, and keeps learning its affine weights (Wu & Johnson 2021)."""
    for name, value in (("precise_bn_batches", precise_bn_batches), ("precise_bn_batch_size", precise_bn_batch_size),
                        ("freeze_images", freeze_images)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"norm.{name}={value!r} is invalid: must be null (off) or an integer >= 1")
    if (precise_bn_batches is None) != (precise_bn_batch_size is None):
        raise ConfigError("norm.precise_bn_batches and norm.precise_bn_batch_size go together: set both or neither")
    if freeze_after is not None and (not isinstance(freeze_after, (int, float)) or not 0 < freeze_after < 1):
        raise ConfigError(f"norm.freeze_after={freeze_after!r} is invalid: must be null (off) or a fraction of "
                          f"training, 0 < freeze_after < 1")
    if (freeze_after is None) != (freeze_images is None):
        raise ConfigError("norm.freeze_after and norm.freeze_images go together: set both or neither")
    return lambda channels: nn.BatchNorm2d(channels, momentum=momentum)


@register_norm("gn")
def group_norm(groups: Optional[int] = None, channels_per_group: Optional[int] = None) -> NormFactory:
    """GroupNorm with a fixed group count G, or a fixed number of channels per group (GN Table 3)."""
    return _group_norm_factory("gn", groups, channels_per_group)


def _group_norm_factory(name: str, groups: Optional[int], channels_per_group: Optional[int]) -> NormFactory:
    if (groups is None) == (channels_per_group is None):
        raise ConfigError(
            f"norm={name} needs exactly one of norm.groups or norm.channels_per_group "
            f"(got groups={groups}, channels_per_group={channels_per_group})"
        )
    if groups is not None:
        _check_group_count(groups)
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


@register_norm("bn_ws")
def batch_norm_ws(momentum: float) -> NormFactory:
    """BatchNorm2d after weight-standardized convolutions (Qiao et al. 2019)."""
    return WeightStandardized(batch_norm(momentum))


@register_norm("gn_ws")
def group_norm_ws(groups: Optional[int] = None, channels_per_group: Optional[int] = None) -> NormFactory:
    """GroupNorm (settings as norm=gn) after weight-standardized convolutions (Qiao et al. 2019)."""
    return WeightStandardized(_group_norm_factory("gn_ws", groups, channels_per_group))


@register_norm("brn")
def batch_renorm(momentum: float, rmax: float, dmax: float, warmup_images: int) -> NormFactory:
    """Batch Renormalization (Ioffe 2017); r_max ramps 1 -> rmax, d_max 0 -> dmax while each device
    trains on its first warmup_images images."""
    if not isinstance(rmax, (int, float)) or rmax < 1:
        raise ConfigError(f"norm.rmax={rmax!r} is invalid: must be a number >= 1")
    if not isinstance(dmax, (int, float)) or dmax < 0:
        raise ConfigError(f"norm.dmax={dmax!r} is invalid: must be a number >= 0")
    if not isinstance(warmup_images, int) or warmup_images < 0:
        raise ConfigError(f"norm.warmup_images={warmup_images!r} is invalid: must be an integer >= 0")
    return lambda channels: BatchRenorm2d(channels, momentum=momentum, rmax=float(rmax), dmax=float(dmax),
                                          warmup_images=warmup_images)


@dataclass(frozen=True)
class BeforeAddition:
    """A norm factory, called as `factory`, that gives the norms right before a residual addition (a
    block's last one and the projection shortcut's) from `last` instead (the model asks through
    `norm_before_addition`)."""

    factory: NormFactory
    last: NormFactory

    def __call__(self, channels: int) -> nn.Module:
        return self.factory(channels)


def norm_before_addition(factory: NormFactory, channels: int) -> nn.Module:
    """The norm layer that `factory` puts right before a residual addition."""
    return factory.last(channels) if isinstance(factory, BeforeAddition) else factory(channels)


@register_norm("frn")
def filter_response_norm(eps: float, skip_tlu_before_addition: Optional[bool] = None) -> NormFactory:
    """Filter Response Normalization with its TLU (Singh & Krishnan 2019), in place of norm + ReLU;
    with `skip_tlu_before_addition`, the norms right before a residual addition have no TLU (He et
    al. 2016 found a nonlinearity there harmful; timm's ResNets apply none)."""
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ConfigError(f"norm.eps={eps!r} is invalid: must be a number > 0")
    if skip_tlu_before_addition not in (None, True, False):
        raise ConfigError(f"norm.skip_tlu_before_addition={skip_tlu_before_addition!r} is invalid: "
                          f"must be null (off), true or false")
    everywhere = lambda channels: FilterResponseNorm2d(channels, eps=float(eps))  # noqa: E731
    if not skip_tlu_before_addition:
        return everywhere
    return BeforeAddition(everywhere, lambda channels: FilterResponseNorm2d(channels, eps=float(eps), tlu=False))


@register_norm("evonorm")
def evonorm_s0(groups: int) -> NormFactory:
    """EvoNorm-S0 (Liu et al. 2020) with `groups` groups for its group std, in place of norm + ReLU."""
    _check_group_count(groups)

    def make(channels: int) -> nn.Module:
        _check_groups(channels, groups, f"norm.groups={groups}")
        return EvoNormS02d(channels, groups)

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


def canonical_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """`spec` with each whole number given to a float argument of its builder as a float, so that a
    run's identity does not depend on how a number was typed (norm.rmax=3 and the YAML's 3.0 are the
    same run). Unknown norms and settings pass through unchanged for `build_norm` to refuse."""
    builder = NORMS.get(cast(str, spec.get("name")))  # None (no name): no builder
    hints = typing.get_type_hints(builder) if builder else {}
    return {key: float(value) if _takes_float(hints.get(key)) and type(value) is int else value
            for key, value in spec.items()}


def _takes_float(hint: Any) -> bool:
    return hint is float or float in typing.get_args(hint)


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
    parameters = inspect.signature(builder).parameters.values()
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.name not in spec]
    if missing:
        raise ConfigError(f"norm.{missing[0]} is missing: norm={name} needs {', '.join(missing)} "
                          f"(its defaults are in conf/norm/{name}.yaml)")
    return builder(**spec)
