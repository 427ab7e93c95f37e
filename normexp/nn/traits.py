"""What kind of layer a norm layer is, asked in one place.

A norm layer class declares its traits as a class attribute `norm_traits` (a NormTraits; traits
are not inherited: a subclass declares its own); torch's norm classes have theirs in
TORCH_TRAITS. The model asks `traits_of` for every norm layer its factory builds, which refuses a
class that declares none, and every path that treats norms differently asks `norm_traits`: the
per-device split (normexp.nn.devices), bf16 input (normexp.nn.precision), precise statistics,
FrozenBN and the BN evaluations (normexp.nn.precise_bn, normexp.train.bn_evaluation) and the ReLU
after a norm (normexp.nn.models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn
from torch.nn.utils import parametrize

from normexp.errors import ConfigError


@dataclass(frozen=True)
class NormTraits:
    """batch_dependent: normalizes over the batch, so each virtual device's images alone (the layer
    needs a `per_device(devices)` method, normexp.nn.devices); running_statistics: keeps running
    averages for evaluation (precise statistics, FrozenBN and the extra evaluations recompute or
    freeze them; the layer then has BatchNorm's `running_mean`, `running_var`,
    `num_batches_tracked`, `momentum` and `track_running_stats`); corrects_statistics: corrects its
    batch statistics toward the running ones in training (Batch Renorm; the batch-statistics
    evaluation turns that off through the layer's `batch_statistics_only()`); native_bf16: its
    kernel takes bf16 input and keeps its statistics in fp32 (else it gets fp32 input under
    trainer.precision=bf16); includes_activation: it applies its own nonlinearity, so the model
    puts no ReLU right after it."""

    batch_dependent: bool = False
    running_statistics: bool = False
    corrects_statistics: bool = False
    native_bf16: bool = False
    includes_activation: bool = False


BATCH_NORM = NormTraits(batch_dependent=True, running_statistics=True, native_bf16=True)
TORCH_TRAITS: dict[type, NormTraits] = {  # exact classes: a subclass declares its own
    nn.BatchNorm2d: BATCH_NORM,
    nn.GroupNorm: NormTraits(native_bf16=True),
    nn.LayerNorm: NormTraits(native_bf16=True),
    nn.InstanceNorm2d: NormTraits(native_bf16=True),
    nn.Identity: NormTraits(native_bf16=True),  # norm=none: nothing to compute
    # the rest of torch's norms: their bf16 kernels are not checked here, so they get fp32 input
    **{cls: NormTraits(batch_dependent=True, running_statistics=True)
       for cls in (nn.BatchNorm1d, nn.BatchNorm3d, nn.SyncBatchNorm)},
    **{cls: NormTraits() for cls in (nn.InstanceNorm1d, nn.InstanceNorm3d)},
}
RUNNING_STATISTICS = ("running_mean", "running_var", "num_batches_tracked", "momentum", "track_running_stats")
TORCH_NORM_BASES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def layer_class(module: nn.Module) -> type:
    """The module's own class (a parametrized module's is a generated subclass of it)."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


def norm_traits(module: nn.Module) -> Optional[NormTraits]:
    """The traits `module`'s class declares (or torch's class has), None for a module that is no
    norm layer; ConfigError for a subclass of torch's norms that declares none (not guessed)."""
    cls = layer_class(module)
    declared = cls.__dict__.get("norm_traits") or TORCH_TRAITS.get(cls)
    if declared is None and isinstance(module, TORCH_NORM_BASES):
        raise undeclared(module)
    return declared


def traits_of(layer: nn.Module) -> NormTraits:
    """The traits of a layer built as a norm, checked against what they promise; ConfigError if its
    class declares none or lacks what a trait needs."""
    declared = norm_traits(layer)
    if declared is None:
        raise undeclared(layer)
    name = layer_class(layer).__name__
    missing = [a for a in RUNNING_STATISTICS if declared.running_statistics and not hasattr(layer, a)]
    if missing:
        raise ConfigError(f"a {name} norm layer has the running_statistics trait but no {', '.join(missing)} "
                          f"(BatchNorm's running statistics, normexp.nn.traits)")
    if declared.corrects_statistics and not hasattr(layer, "batch_statistics_only"):
        raise ConfigError(f"a {name} norm layer has the corrects_statistics trait but no batch_statistics_only() "
                          f"method (normexp.nn.traits)")
    return declared


def undeclared(layer: nn.Module) -> ConfigError:
    cls = layer_class(layer)
    if cls.__module__.startswith("torch."):
        return ConfigError(f"torch's {cls.__name__} has no norm traits in normexp.nn.traits.TORCH_TRAITS: add it there")
    return ConfigError(f"a {cls.__name__} norm layer declares no norm_traits: give its class "
                       f"`norm_traits = NormTraits(...)` (normexp.nn.traits: batch_dependent, running_statistics, "
                       f"corrects_statistics, native_bf16, includes_activation)")
