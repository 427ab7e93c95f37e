"""The small-batch fixes (normexp.nn.layers): their math against the papers' formulas, eval mode, the
per-device protocol, and packing (each member computed exactly as alone)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normexp.nn import packing
from normexp.nn.devices import split_batch_statistics
from normexp.nn.layers import BatchRenorm2d, EvoNormS02d, FilterResponseNorm2d, WeightStandardization, renorm_limits
from normexp.nn.models import build_model
from tests.helpers import assert_packed_equals_members, norm_spec, packed_input

MODEL = {"depth": 8, "base_width": 8, "num_classes": 10, "zero_init_residual": True}
NEW_NORMS = [norm_spec("brn"), norm_spec("bn_ws"), norm_spec("gn_ws", groups=4), norm_spec("frn"),
             norm_spec("evonorm", groups=4)]


def _brn(channels: int = 6, step: int = 2500, **kwargs) -> BatchRenorm2d:
    """A BRN half-way through its ramp (r_max 2, d_max 2.5) for 4 images per device, with
    non-trivial state."""
    brn = BatchRenorm2d(channels, **{"warmup_images": 2 * 2500 * 4, **kwargs})
    with torch.no_grad():
        brn.weight.normal_(1.0, 0.5)
        brn.bias.normal_()
        brn.running_mean.normal_()
        brn.running_var.uniform_(0.2, 4.0)
        brn.num_batches_tracked.fill_(step)
    return brn


def _renormalized(x: torch.Tensor, brn: BatchRenorm2d, r_max: float, d_max: float) -> torch.Tensor:
    """Ioffe (2017), Algorithm 1, with r and d held constant (computed from `brn`'s running stats)."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + brn.eps)
    running_std = torch.sqrt(brn.running_var + brn.eps).view(1, -1, 1, 1)
    r = torch.clamp(std / running_std, 1 / r_max, r_max).detach()
    d = torch.clamp((mean - brn.running_mean.view(1, -1, 1, 1)) / running_std, -d_max, d_max).detach()
    return brn.weight.view(1, -1, 1, 1) * ((x - mean) / std * r + d) + brn.bias.view(1, -1, 1, 1)


def test_batch_renorm_training_step_is_the_papers_formula_with_r_and_d_constant():
    torch.manual_seed(0)
    brn = _brn()
    reference = _brn()
    reference.load_state_dict(brn.state_dict())
    bn = nn.BatchNorm2d(6)
    bn.load_state_dict(brn.state_dict())
    x = (torch.randn(4, 6, 3, 3) * torch.rand(1, 6, 1, 1) * 5
         + torch.linspace(-8, 8, 6).view(1, 6, 1, 1)).requires_grad_()
    target = torch.randn(4, 6, 3, 3)

    expected = _renormalized(x, reference, r_max=2.0, d_max=2.5)
    (expected * target).sum().backward()
    grads = x.grad.clone(), reference.weight.grad.clone(), reference.bias.grad.clone()
    x.grad = None
    out = brn(x)
    (out * target).sum().backward()

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip((x.grad, brn.weight.grad, brn.bias.grad), grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the setting clips r and d somewhere (d at both ends) and not everywhere
    running_std = reference.running_var.add(1e-5).sqrt()
    r = x.detach().var(dim=(0, 2, 3), unbiased=False).add(1e-5).sqrt() / running_std
    d = (x.detach().mean(dim=(0, 2, 3)) - reference.running_mean) / running_std
    assert ((r > 2) | (r < 0.5)).any() and ((r < 2) & (r > 0.5)).any()
    assert (d > 2.5).any() and (d < -2.5).any() and (d.abs() < 2.5).any()
    # running statistics and the step counter update as BatchNorm2d's
    bn.train()(x.detach())
    torch.testing.assert_close(brn.running_mean, bn.running_mean)
    torch.testing.assert_close(brn.running_var, bn.running_var)
    assert int(brn.num_batches_tracked) == 2501


@pytest.mark.parametrize("step, limits", [(0, (1.0, 0.0)), (1250, (1.5, 1.25)), (5000, (3.0, 5.0)), (9000, (3.0, 5.0))])
def test_batch_renorm_relaxes_r_max_and_d_max_linearly_over_its_warmup(step, limits):
    r_max, d_max = renorm_limits(torch.tensor(step), rmax=3.0, dmax=5.0, warmup_images=5000)
    assert (float(r_max), float(d_max)) == pytest.approx(limits)
    assert tuple(map(float, renorm_limits(torch.tensor(0), 3.0, 5.0, warmup_images=0))) == (3.0, 5.0)


def test_batch_renorm_is_batchnorm_at_its_first_step_and_in_eval_mode():
    torch.manual_seed(1)
    x = torch.randn(4, 5, 3, 3) * 3 + 1
    torch.testing.assert_close(BatchRenorm2d(5)(x), nn.BatchNorm2d(5)(x))
    brn = _brn(5).eval()
    bn = nn.BatchNorm2d(5)
    bn.load_state_dict(brn.state_dict())
    torch.testing.assert_close(brn(x), bn.eval()(x))
    assert int(brn.num_batches_tracked) == 2500


def test_batch_renorm_on_4_devices_equals_4_separate_passes():
    torch.manual_seed(2)
    model = build_model(MODEL, norm_spec("brn"))
    keys = model.state_dict().keys()
    split_batch_statistics(model, 4)
    assert model.state_dict().keys() == keys
    assert all(m.devices == 4 for m in model.modules() if isinstance(m, BatchRenorm2d))

    brn = _brn(devices=4, warmup_images=2 * 2500 * 2)  # half-way at 2 images per device, like each copy
    copies = [_brn(devices=1, warmup_images=2 * 2500 * 2) for _ in range(4)]
    for c in copies:
        c.load_state_dict(brn.state_dict())
    x = torch.randn(8, 6, 3, 3).contiguous(memory_format=torch.channels_last) * 2
    x_ref, x_dev = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn(8, 6, 3, 3)
    out_ref = torch.cat([c(chunk) for c, chunk in zip(copies, x_ref.chunk(4))])
    (out_ref * target).sum().backward()
    out = brn(x_dev)
    (out * target).sum().backward()
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_dev.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(brn.weight.grad, sum(c.weight.grad for c in copies), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(brn.running_mean, torch.stack([c.running_mean for c in copies]).mean(0))
    torch.testing.assert_close(brn.running_var, torch.stack([c.running_var for c in copies]).mean(0))
    assert int(brn.num_batches_tracked) == 2501


def test_compiled_batch_renorm_keeps_the_gradients_of_r_and_d_from_before_the_running_update():
    # the backend that partitions like inductor's (min-cut) and runs eagerly: fast, same hazard
    eager, compiled = _brn(3, momentum=0.5), _brn(3, momentum=0.5)
    compiled.load_state_dict(eager.state_dict())
    forward = torch.compile(compiled, backend="aot_eager_decomp_partition", fullgraph=True)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    (eager(x_eager) ** 2).sum().backward()
    (forward(x_compiled) ** 2).sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.weight.grad, eager.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.running_var, eager.running_var)


def test_weight_standardization_standardizes_each_filter_of_every_conv():
    torch.manual_seed(3)
    conv = nn.Conv2d(4, 6, 3, groups=2)
    nn.utils.parametrize.register_parametrization(conv, "weight", WeightStandardization())
    w = conv.parametrizations.weight.original
    flat = w.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(conv.weight, expected.view_as(w))
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(conv(x), F.conv2d(x, expected.view_as(w), conv.bias, groups=2))
    for spec in (norm_spec("bn_ws"), norm_spec("gn_ws", groups=4)):
        convs = [m for m in build_model(MODEL, spec).modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 9 and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(nn.utils.parametrize.is_parametrized(m) for m in build_model(MODEL, norm_spec("bn")).modules())


def test_filter_response_norm_is_the_papers_formula_per_sample():
    torch.manual_seed(4)
    frn = FilterResponseNorm2d(6)
    for p in frn.parameters():
        nn.init.normal_(p)
    x = torch.randn(3, 6, 4, 4) * 3 + 1
    nu2 = x.pow(2).mean(dim=(2, 3), keepdim=True)
    y = frn.weight.view(1, -1, 1, 1) * x / torch.sqrt(nu2 + 1e-6) + frn.bias.view(1, -1, 1, 1)
    out = frn(x)
    torch.testing.assert_close(out, torch.max(y, frn.tau.view(1, -1, 1, 1)))
    torch.testing.assert_close(frn(x[1:2]), out[1:2])
    torch.testing.assert_close(frn.eval()(x), out)


def test_evonorm_s0_is_the_papers_formula_per_sample():
    torch.manual_seed(5)
    evo = EvoNormS02d(8, groups=4)
    for p in evo.parameters():
        nn.init.normal_(p)
    x = torch.randn(3, 8, 4, 4) * 2 + 1
    std = torch.sqrt(x.view(3, 4, 2, 4, 4).var(dim=(2, 3, 4), unbiased=False) + 1e-5)
    std = std.repeat_interleave(2, dim=1).view(3, 8, 1, 1)
    v, gamma, beta = (p.view(1, -1, 1, 1) for p in (evo.v, evo.weight, evo.bias))
    out = evo(x)
    torch.testing.assert_close(out, x * torch.sigmoid(v * x) / std * gamma + beta)
    torch.testing.assert_close(evo(x.contiguous(memory_format=torch.channels_last)), out)
    torch.testing.assert_close(evo(x[1:2]), out[1:2])
    torch.testing.assert_close(evo.eval()(x), out)


def _members(spec: dict, seeds=(0, 1, 2)) -> list[nn.Module]:
    """Models with non-trivial norm parameters and statistics (BRN mid-ramp, so r and d act)."""
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = build_model(MODEL, spec)
        with torch.no_grad():
            for module in model.modules():
                for name, p in module.named_parameters(recurse=False):
                    if p.ndim == 1:
                        p.normal_(1.0 if name in ("weight", "v") else 0.0, 0.3)
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_()
                    module.running_var.uniform_(0.5, 2.0)
                    module.num_batches_tracked.fill_(2500)
        models.append(model)
    return models


@pytest.mark.parametrize("spec", NEW_NORMS, ids=lambda s: s["name"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_new_norms_compute_each_member_exactly_as_alone(spec, mode):
    assert_packed_equals_members(_members(spec), mode)


def test_packed_batch_renorm_on_devices_computes_each_member_as_alone_on_devices():
    members = _members(norm_spec("brn"), seeds=(0, 1))
    packed = split_batch_statistics(packing.pack(members), 2)
    for member in members:
        split_batch_statistics(member, 2)
    xs = [torch.randn(4, 3, 32, 32) for _ in members]
    out = packed(packed_input(xs)).view(4, 2, -1)
    for i, (member, x) in enumerate(zip(members, xs)):
        torch.testing.assert_close(out[:, i], member(x), rtol=1e-4, atol=1e-4)


class _Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def test_a_parametrization_packing_does_not_know_is_refused():
    model = build_model(MODEL, norm_spec("bn_ws"))
    packing.check_packable(model)
    nn.utils.parametrize.register_parametrization(model.stem[0], "weight", _Doubled())
    with pytest.raises(packing.PackingError, match="cannot pack a Conv2d layer with a _Doubled parametrization"):
        packing.check_packable(model)


def test_batch_renorm_ramp_ends_at_the_same_share_of_training_for_every_batch_size():
    """claim: 8 devices, 50,000 images per epoch: one epoch is 6,250 images per device at any batch."""
    for per_device in (2, 8, 32, 64):
        steps_per_epoch = 50_000 // (8 * per_device)
        r_max, _ = renorm_limits(torch.tensor(steps_per_epoch * per_device), 3.0, 5.0, warmup_images=6250)
        assert float(r_max) == pytest.approx(3.0, abs=0.02)  # up to the dropped last batch
        r_half, _ = renorm_limits(torch.tensor(steps_per_epoch // 2 * per_device), 3.0, 5.0, warmup_images=6250)
        assert float(r_half) == pytest.approx(2.0, abs=0.02)


def test_frn_without_the_tlu_before_the_addition_drops_it_only_there():
    model_cfg = {"depth": 8, "base_width": 8, "num_classes": 10, "zero_init_residual": False}
    model = build_model(model_cfg, norm_spec("frn_noaddtlu"))
    tlu = {name: layer.tlu for name, layer in model.named_modules() if isinstance(layer, FilterResponseNorm2d)}
    assert {name for name, on in tlu.items() if not on} == {
        name for name in tlu if name.endswith("norm2") or ".shortcut." in name}
    assert tlu["stem.1"] and tlu["stages.0.0.norm1"]
    x = torch.randn(2, 8, 4, 4) - 3.0  # mostly negative: a TLU at tau=0 would clip it
    plain = FilterResponseNorm2d(8, tlu=False)
    assert (plain(x) < 0).any() and "tau" not in dict(plain.named_parameters())
    torch.manual_seed(0)
    assert_packed_equals_members([build_model(model_cfg, norm_spec("frn_noaddtlu")) for _ in range(3)], "train")
