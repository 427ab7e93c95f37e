"""One owner of "what kind of norm layer is this" (normexp.nn.traits): a layer of a new class is
treated by every path as its declared traits say, and a class that declares none is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normexp.errors import ConfigError
from normexp.nn.devices import batch_dependent, split_batch_statistics
from normexp.nn.models import CifarResNet, activation_after
from normexp.nn.precise_bn import batch_norm_layers
from normexp.nn.precision import set_norm_precision
from normexp.nn.traits import NormTraits, norm_traits, traits_of


class Probe(nn.Module):
    """A norm layer of a new class (the identity, with BN's running buffers); each test sets its traits."""

    norm_traits = NormTraits()

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.track_running_stats, self.momentum = True, 0.1
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _model() -> nn.Module:
    return CifarResNet(Probe, depth=8, base_width=8, num_classes=10, zero_init_residual=False)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_input_follows_the_native_bf16_trait(monkeypatch, native):
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(native_bf16=native))
    probes = [m for m in set_norm_precision(_model()).modules() if isinstance(m, Probe)]
    assert probes and all(bool(p._forward_pre_hooks) is not native for p in probes)


@pytest.mark.parametrize("running", [True, False])
def test_precise_statistics_frozen_bn_and_the_evaluations_follow_the_running_statistics_trait(monkeypatch, running):
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(running_statistics=running))
    model = _model()
    assert {type(m) for m in batch_norm_layers(model)} == ({Probe} if running else set())


@pytest.mark.parametrize("own_activation", [True, False])
def test_the_relu_after_a_norm_follows_the_includes_activation_trait(monkeypatch, own_activation):
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(includes_activation=own_activation))
    assert isinstance(activation_after(Probe(4)), nn.Identity if own_activation else nn.ReLU)
    relus = [m for m in _model().stem if isinstance(m, nn.ReLU)]
    assert len(relus) == (0 if own_activation else 1)


def test_the_per_device_split_follows_the_batch_dependent_trait(monkeypatch):
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(batch_dependent=True))
    assert batch_dependent(Probe(4))
    with pytest.raises(ConfigError, match="cannot split a Probe layer per device"):
        split_batch_statistics(_model(), 2)  # batch-dependent without per_device(devices): refused
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(batch_dependent=False))
    assert not batch_dependent(Probe(4)) and split_batch_statistics(_model(), 2) is not None


def test_a_class_that_declares_no_traits_is_refused():
    class Undeclared(nn.Module):
        def forward(self, x):
            return x

    class BatchNormSubclass(nn.BatchNorm2d):
        """Traits are not inherited: a subclass of torch's norm says its own."""

    with pytest.raises(ConfigError, match="a Undeclared norm layer declares no norm_traits"):
        CifarResNet(lambda channels: Undeclared(), depth=8, base_width=8, num_classes=10, zero_init_residual=False)
    assert norm_traits(Undeclared()) is None  # not a norm layer as far as a model scan can tell
    with pytest.raises(ConfigError, match="a BatchNormSubclass norm layer declares no norm_traits"):
        norm_traits(BatchNormSubclass(4))
    assert traits_of(nn.BatchNorm2d(4)).batch_dependent and not traits_of(nn.GroupNorm(2, 4)).batch_dependent


def test_a_trait_that_needs_an_interface_is_refused_without_it(monkeypatch):
    class Bare(nn.Module):
        norm_traits = NormTraits(running_statistics=True)

        def forward(self, x):
            return x

    with pytest.raises(ConfigError, match="running_statistics trait but no running_mean, running_var"):
        traits_of(Bare())
    monkeypatch.setattr(Probe, "norm_traits", NormTraits(corrects_statistics=True))
    with pytest.raises(ConfigError, match="corrects_statistics trait but no batch_statistics_only"):
        traits_of(Probe(4))
    with pytest.raises(ConfigError, match="torch's LazyBatchNorm2d has no norm traits"):
        norm_traits(nn.LazyBatchNorm2d())
    assert norm_traits(nn.BatchNorm1d(4)).running_statistics  # torch's other norms are known
