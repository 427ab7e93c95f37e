"""trainer.precision=bf16: convolutions in bf16, each norm in its kernel's precision, loss and
weights in fp32, in the identity."""

from __future__ import annotations

import pytest
import torch

from normexp.config import ConfigError, validate
from normexp.nn.devices import PerDeviceBatchNorm2d, split_batch_statistics
from normexp.nn.models import build_model
from normexp.nn.precision import autocast, set_norm_precision
from normexp.nn.traits import norm_traits
from normexp.train.conductor import train_job
from tests.helpers import norm_spec, record_numbers, run_dir

MODEL = {"depth": 8, "base_width": 16, "num_classes": 10, "zero_init_residual": True}


@pytest.mark.parametrize("norm, norm_input", [("bn", torch.bfloat16), ("gn", torch.bfloat16), ("ln", torch.bfloat16),
                                              ("brn", torch.float32), ("frn", torch.float32),
                                              ("evonorm", torch.float32)])
def test_under_bf16_convolutions_run_in_bf16_and_each_norm_in_its_kernels_precision(norm, norm_input):
    model = set_norm_precision(split_batch_statistics(build_model(MODEL, norm_spec(norm)), 2))
    seen: dict[str, set] = {"norm": set(), "conv": set()}

    def watch(kind):
        def hook(module, args, out):
            seen[kind].update({args[0].dtype, ("out", out.dtype)})
        return hook

    for module in model.modules():
        if norm_traits(module) is not None and not isinstance(module, torch.nn.Identity):
            module.register_forward_hook(watch("norm"))
        elif isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(watch("conv"))
    with autocast("bf16", torch.device("cpu")):
        logits = model(torch.randn(4, 3, 32, 32))
    assert seen["norm"] == {norm_input, ("out", norm_input)}
    assert ("out", torch.bfloat16) in seen["conv"]
    assert logits.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


@pytest.mark.parametrize("make_layer", [lambda: torch.nn.BatchNorm2d(16), lambda: torch.nn.GroupNorm(8, 16),
                                        lambda: PerDeviceBatchNorm2d(torch.nn.BatchNorm2d(16), 4)],
                         ids=["bn", "gn", "bn-per-device"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_a_native_bf16_norm_keeps_fp32_statistics_and_matches_the_fp32_layer(make_layer, channels_last):
    """bf16 input, fp32 accumulation: on the same (bf16) values the statistics, and so the running
    averages and the parameters' gradients, agree with the fp32 layer's to fp32 rounding; the output
    differs by its own rounding to bf16 (8 bits of mantissa) and the input's gradient by the bf16
    upstream gradient's."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(16, 16, 8, 8) * 3 + 5).bfloat16().contiguous(memory_format=fmt)
    upstream = torch.randn(16, 16, 8, 8)
    ours, fp32 = make_layer(), make_layer()
    assert norm_traits(ours).native_bf16
    x_ours, x_fp32 = x.clone().requires_grad_(), x.float().requires_grad_()
    out_ours, out_fp32 = ours(x_ours), fp32(x_fp32)
    out_ours.backward(upstream.bfloat16())
    out_fp32.backward(upstream.bfloat16().float())
    assert out_ours.dtype == torch.bfloat16
    assert torch.allclose(out_ours.float(), out_fp32, rtol=2**-8, atol=2**-8 * out_fp32.abs().max().item())
    for name, buffer in fp32.named_buffers():
        assert torch.allclose(dict(ours.named_buffers())[name].float(), buffer.float(), rtol=1e-5), name
    assert torch.allclose(ours.weight.grad, fp32.weight.grad, rtol=1e-3)
    assert torch.allclose(x_ours.grad.float(), x_fp32.grad, rtol=2**-7, atol=2**-7 * x_fp32.grad.abs().max().item())


def test_a_bf16_run_is_another_run_and_trains(make_cfg):
    fp32, bf16 = make_cfg("trainer.epochs=1"), make_cfg("trainer.epochs=1", "trainer.precision=bf16")
    assert run_dir(bf16) != run_dir(fp32)  # a different identity: its numbers differ
    [summary] = train_job(bf16)
    train_job(fp32)
    ours, theirs = record_numbers(run_dir(bf16))[0], record_numbers(run_dir(fp32))[0]
    assert summary["status"] == "finished" and ours["train_loss"] != theirs["train_loss"]
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.05)


def test_an_unknown_precision_is_named_with_the_allowed_values(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.precision.*allowed: null \(fp32\), bf16"):
        validate(make_cfg("trainer.precision=fp16"))
