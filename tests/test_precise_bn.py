"""Precise BN: running statistics become exact averages of batch statistics, nothing else changes."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normexp.nn.devices import PerDeviceBatchNorm2d
from normexp.nn.layers import BatchRenorm2d
from normexp.nn.precise_bn import recompute_batchnorm_statistics


def _model() -> nn.Sequential:
    """conv -> per-device BN (2 devices) -> ReLU -> conv -> BRN mid-ramp, all with non-trivial state."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), PerDeviceBatchNorm2d(nn.BatchNorm2d(4), devices=2), nn.ReLU(),
                          nn.Conv2d(4, 5, 1), BatchRenorm2d(5, momentum=0.3))
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.normal_(1.0, 0.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(7)
    return model.eval()


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)


def test_running_statistics_become_the_average_of_the_batches_statistics():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(8, 3, 6, 6) * 2 + 1 for _ in range(4)]
    recompute_batchnorm_statistics(model, iter(batches), num_batches=3)  # the 4th batch is not read

    first, second = [], []
    conv1, bn1, _, conv2, _ = model
    for x in batches[:3]:
        h = conv1(x)
        first.append(_batch_stats(h))
        # the first BN as in training: each device's 4 images normalized with their own statistics
        h = torch.cat([F.batch_norm(c, None, None, bn1.weight, bn1.bias, training=True) for c in h.chunk(2)])
        second.append(_batch_stats(conv2(F.relu(h))))
    for bn, stats in ((model[1], first), (model[4], second)):
        torch.testing.assert_close(bn.running_mean, torch.stack([m for m, _ in stats]).mean(0))
        torch.testing.assert_close(bn.running_var, torch.stack([v for _, v in stats]).mean(0))
    state = model.state_dict()
    for key, value in before.items():
        if "running_" not in key:
            assert torch.equal(state[key], value), key  # parameters and step counters unchanged
    assert (model[1].momentum, model[4].momentum) == (0.1, 0.3)
    assert not any(m.training for m in model.modules())


def test_too_few_batches_raise_and_change_nothing():
    model = _model().train()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="needs 3 batches, got 2"):
        recompute_batchnorm_statistics(model, [torch.randn(4, 3, 6, 6)] * 2, num_batches=3)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert all(m.training for m in model.modules()) and model[4].momentum == 0.3


def test_a_model_without_batchnorm_reads_no_batches():
    def batches():
        pytest.fail("a batch was read")
        yield

    recompute_batchnorm_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4)), batches(), num_batches=5)
