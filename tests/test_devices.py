"""The per-device protocol: BN statistics per virtual device, everything else unchanged."""

import copy

import pytest
import torch
from torch import nn

from normexp.nn.devices import PerDeviceBatchNorm2d, split_batch_statistics
from normexp.nn.models import build_model
from normexp.nn.packing import pack
from tests.helpers import killed_and_resumed, norm_spec, packed_input, record_numbers

MODEL = {"depth": 8, "base_width": 8, "num_classes": 10, "zero_init_residual": False}


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_one_step_on_8_devices_equals_8_separate_bn_passes_gradients_included(layout):
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(6)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    per_device = PerDeviceBatchNorm2d(reference, devices=8)
    x = torch.randn(16, 6, 5, 5).contiguous(memory_format=layout)
    target = torch.randn(16, 6, 5, 5)

    x_ref = x.clone().requires_grad_()
    copies = [nn.BatchNorm2d(6) for _ in range(8)]
    for device_bn in copies:
        device_bn.load_state_dict(reference.state_dict())
    out_ref = torch.cat([bn(chunk) for bn, chunk in zip(copies, x_ref.chunk(8))])
    (out_ref * target).sum().backward()

    x_dev = x.clone().requires_grad_()
    out = per_device(x_dev)
    (out * target).sum().backward()

    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_dev.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_device.weight.grad, sum(c.weight.grad for c in copies), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(per_device.bias.grad, sum(c.bias.grad for c in copies), rtol=1e-4, atol=1e-5)
    # running statistics: the average of the devices' own updates
    torch.testing.assert_close(per_device.running_mean, torch.stack([c.running_mean for c in copies]).mean(0))
    torch.testing.assert_close(per_device.running_var, torch.stack([c.running_var for c in copies]).mean(0))
    assert int(per_device.num_batches_tracked) == 1


def test_one_device_and_eval_mode_are_plain_batchnorm():
    torch.manual_seed(1)
    reference = nn.BatchNorm2d(4)
    x = torch.randn(8, 4, 3, 3)
    one = PerDeviceBatchNorm2d(reference, devices=1)
    torch.testing.assert_close(one(x), nn.BatchNorm2d(4)(x))
    eight = PerDeviceBatchNorm2d(reference, devices=8).eval()
    torch.testing.assert_close(eight(x), reference.eval()(x))


def test_split_batch_statistics_swaps_only_batchnorm_and_keeps_the_state_dict():
    torch.manual_seed(0)
    bn_model = build_model(MODEL, norm_spec("bn"))
    keys = bn_model.state_dict().keys()
    split_batch_statistics(bn_model, 4)
    bns = [m for m in bn_model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is PerDeviceBatchNorm2d and m.devices == 4 for m in bns)
    assert bn_model.state_dict().keys() == keys
    gn_model = build_model(MODEL, {"name": "gn", "groups": 2})
    before = [type(m) for m in gn_model.modules()]
    assert [type(m) for m in split_batch_statistics(gn_model, 4).modules()] == before


def test_a_packed_model_on_devices_computes_each_member_as_alone_on_devices():
    torch.manual_seed(0)
    members = [build_model(MODEL, norm_spec("bn")) for _ in range(2)]
    packed = split_batch_statistics(pack(members), 4)
    for member in members:
        split_batch_statistics(member, 4)
    xs = [torch.randn(8, 3, 32, 32) for _ in members]
    out = packed(packed_input(xs)).view(8, 2, -1)
    for i, (member, x) in enumerate(zip(members, xs)):
        torch.testing.assert_close(out[:, i], member(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_a_whole_model_on_8_devices_equals_8_separate_passes_gradients_included(layout):
    torch.manual_seed(0)
    model = build_model({**MODEL, "base_width": 16}, norm_spec("bn"))
    per_device = split_batch_statistics(copy.deepcopy(model), 8).to(memory_format=layout)
    model = model.to(memory_format=layout)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (16,))
    out_ref = torch.cat([model(chunk) for chunk in x.chunk(8)])
    torch.nn.functional.cross_entropy(out_ref, y).backward()
    out = per_device(x)
    torch.nn.functional.cross_entropy(out, y).backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-4)
    for (name, p_ref), p in zip(model.named_parameters(), per_device.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_a_run_on_devices_resumes_to_the_uninterrupted_numbers(make_cfg, tmp_path, monkeypatch):
    settings = ("data.devices=2", "data.batch_size=4", "trainer.epochs=3", "norm=bn")
    resumed, reference = killed_and_resumed(make_cfg, monkeypatch, tmp_path, settings, 3)
    assert "resuming" in (resumed / "train.log").read_text()
    assert record_numbers(resumed) == record_numbers(reference)


@pytest.mark.parametrize("name", ["gn", "ln", "in", "none", "frn", "evonorm"])
def test_batch_independent_norms_compute_the_same_on_any_number_of_devices(name):
    torch.manual_seed(0)
    model = build_model(MODEL, norm_spec(name, groups=4) if name in ("gn", "evonorm") else norm_spec(name))
    on_devices = split_batch_statistics(copy.deepcopy(model), 4)
    x = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(on_devices(x), model(x))
