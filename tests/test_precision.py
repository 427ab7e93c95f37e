"""trainer.precision=bf16: convolutions in bf16, norm layers, loss and weights in fp32, in the identity."""

from __future__ import annotations

import pytest
import torch

from normexp.config import ConfigError, validate
from normexp.nn.models import build_model
from normexp.nn.precision import NORM_LAYERS, autocast, keep_norms_fp32
from normexp.train.conductor import train_run
from tests.helpers import norm_spec, record_numbers, run_dir

MODEL = {"depth": 8, "base_width": 16, "num_classes": 10, "zero_init_residual": True}


@pytest.mark.parametrize("norm", ["bn", "gn", "frn", "evonorm", "ln"])
def test_under_bf16_convolutions_run_in_bf16_and_norm_layers_in_fp32(norm):
    model = keep_norms_fp32(build_model(MODEL, norm_spec(norm)))
    seen: dict[str, set] = {"norm": set(), "conv": set()}

    def watch(kind):
        def hook(module, args, out):
            seen[kind].update({args[0].dtype, ("out", out.dtype)})
        return hook

    for module in model.modules():
        if isinstance(module, NORM_LAYERS):
            module.register_forward_hook(watch("norm"))
        elif isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(watch("conv"))
    with autocast("bf16", torch.device("cpu")):
        logits = model(torch.randn(4, 3, 32, 32))
    assert seen["norm"] == {torch.float32, ("out", torch.float32)}
    assert ("out", torch.bfloat16) in seen["conv"]
    assert logits.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in model.buffers())


def test_a_bf16_run_is_another_run_and_trains(make_cfg):
    fp32, bf16 = make_cfg("trainer.epochs=1"), make_cfg("trainer.epochs=1", "trainer.precision=bf16")
    assert run_dir(bf16) != run_dir(fp32)  # a different identity: its numbers differ
    [summary] = train_run(bf16)
    train_run(fp32)
    ours, theirs = record_numbers(run_dir(bf16))[0], record_numbers(run_dir(fp32))[0]
    assert summary["status"] == "finished" and ours["train_loss"] != theirs["train_loss"]
    assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=0.05)


def test_an_unknown_precision_is_named_with_the_allowed_values(make_cfg):
    with pytest.raises(ConfigError, match=r"trainer.precision.*allowed: null \(fp32\), bf16"):
        validate(make_cfg("trainer.precision=fp16"))
