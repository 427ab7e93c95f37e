import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from normexp.compose import CONF_DIR, compose
from normexp.config import ConfigError
from normexp.nn.models import CifarResNet, build_model
from normexp.nn.norms import NORMS, build_norm
from normexp.record import norm_tag
from tests.helpers import norm_spec


def test_gn_with_one_group_equals_layer_norm_over_chw():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    gn = build_norm({"name": "ln"})(16)
    ln = nn.LayerNorm([16, 8, 8], elementwise_affine=False)
    torch.testing.assert_close(gn(x), ln(x), atol=1e-5, rtol=1e-5)


def test_gn_with_one_channel_per_group_equals_instance_norm():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    gn = build_norm({"name": "in"})(16)
    inorm = nn.InstanceNorm2d(16, affine=False)
    torch.testing.assert_close(gn(x), inorm(x), atol=1e-5, rtol=1e-5)


def test_gn_groups_normalize_each_group_of_each_sample():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, 5) * 3 + 2
    y = build_norm({"name": "gn", "groups": 4})(16)(x).view(3, 4, -1)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)


def test_channels_per_group_sets_group_count_per_layer():
    factory = build_norm({"name": "gn", "channels_per_group": 4})
    assert factory(16).num_groups == 4
    assert factory(64).num_groups == 16


def test_bn_in_train_mode_normalizes_with_batch_statistics():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4) * 5 + 3
    bn = build_norm(norm_spec("bn"))(8).train()
    y = bn(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=(0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean(dim=(0, 2, 3)))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "gn", "groups": 32}, "16 channels"),
        ({"name": "gn", "groups": 3}, "1, 2, 4, 8, 16"),
        ({"name": "gn", "channels_per_group": 3}, "norm.channels_per_group=3"),
        ({"name": "gn_ws", "groups": 3}, "1, 2, 4, 8, 16"),
        ({"name": "evonorm", "groups": 32}, "norm.groups=32 does not fit a layer with 16 channels"),
        ({"name": "evonorm", "groups": 3}, "valid group counts for this width: 1, 2, 4, 8, 16"),
    ],
)
def test_group_setting_that_does_not_fit_a_layer_is_rejected_at_build(spec, message):
    with pytest.raises(ConfigError, match=message):
        CifarResNet(build_norm(spec), depth=8, base_width=16, num_classes=10, zero_init_residual=True)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "gn", "groups": 8, "channels_per_group": 2}, "exactly one of"),
        ({"name": "gn"}, "exactly one of"),
        ({"name": "gn", "groups": 0}, "norm.groups=0"),
        ({"name": "bn", "groups": 8}, "norm.groups is not a setting of norm=bn"),
        ({"name": "batchnorm"}, "registered norms: " + ", ".join(sorted(NORMS))),
        ({"name": "gn_ws"}, "norm=gn_ws needs exactly one of"),
        ({"name": "evonorm", "groups": 0}, "norm.groups=0"),
        (norm_spec("brn", rmax=0.5), "norm.rmax=0.5 is invalid"),
        (norm_spec("brn", dmax=-1), "norm.dmax=-1 is invalid"),
        (norm_spec("brn", warmup_images=1.5), "norm.warmup_images=1.5 is invalid"),
        (norm_spec("frn", eps=0), "norm.eps=0 is invalid"),
    ],
)
def test_bad_norm_config_names_the_field(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_norm(spec)(16)


def test_every_registered_norm_builds_a_model_that_runs():
    x = torch.randn(2, 3, 32, 32)
    for name in NORMS:
        spec = norm_spec(name, groups=4) if name in ("gn", "gn_ws") else norm_spec(name)
        model = CifarResNet(build_norm(spec), depth=8, base_width=8, num_classes=10, zero_init_residual=True)
        assert model(x).shape == (2, 10), name


@pytest.mark.parametrize("name", ["bn", "brn", "bn_ws", "frn", "evonorm"])
def test_zero_init_residual_zeros_last_norm_scale_of_each_block(name):
    model = CifarResNet(build_norm(norm_spec(name)), depth=14, base_width=8, num_classes=10, zero_init_residual=True)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "BasicBlock"]
    assert len(blocks) == 6
    assert all(float(b.norm2.weight.detach().abs().sum()) == 0 for b in blocks)
    assert all(float(b.norm1.weight.detach().min()) == 1 for b in blocks)
    norms = [b.norm1 for b in blocks] + [b.norm2 for b in blocks]
    assert all(float(n.bias.detach().abs().sum()) == 0 for n in norms)
    assert all(float(n.tau.detach().abs().sum()) == 0 for n in norms if hasattr(n, "tau"))  # TLU = ReLU at init
    assert all(float(n.v.detach().min()) == 1 == float(n.v.detach().max()) for n in norms if hasattr(n, "v"))


@pytest.mark.parametrize("name, relu", [("bn", True), ("brn", True), ("gn_ws", True), ("frn", False),
                                        ("evonorm", False)])
def test_a_norm_with_its_own_activation_gets_no_relu_after_it(name, relu):
    spec = norm_spec(name, groups=4) if name == "gn_ws" else norm_spec(name)
    model = CifarResNet(build_norm(spec), depth=8, base_width=8, num_classes=10, zero_init_residual=True)
    after_norms = [model.stem[2]] + [m.act1 for m in model.modules() if m.__class__.__name__ == "BasicBlock"]
    assert all(isinstance(a, nn.ReLU) == relu and isinstance(a, nn.Identity) != relu for a in after_norms)
    assert all(isinstance(m.relu, nn.ReLU) for m in model.modules() if m.__class__.__name__ == "BasicBlock")


@pytest.mark.parametrize("yaml", sorted((CONF_DIR / "norm").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_norm_yaml_builds_a_model_that_runs(yaml):
    cfg = compose([f"norm={yaml.stem}"])
    model = build_model(cfg.model, OmegaConf.to_container(cfg.norm, resolve=True))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, cfg.model.num_classes)


def test_norm_tags():
    assert norm_tag({"name": "bn"}) == "bn"
    assert norm_tag({"name": "gn", "groups": 8}) == "gn8"
    assert norm_tag({"name": "gn", "channels_per_group": 16}) == "gn-cpg16"


def test_a_whole_number_typed_for_a_float_setting_is_the_same_run():
    from normexp.record import identity
    from normexp.train.harness import run_config

    def run_identity(*overrides):
        return identity(run_config(compose(list(overrides)), 0), "data")

    assert run_identity("norm=brn", "norm.rmax=3") == run_identity("norm=brn")  # the YAML says 3.0
    assert run_identity("norm=brn", "norm.rmax=3")["norm"]["rmax"] == 3.0
    assert run_identity("norm=brn", "norm.warmup_images=6250")["norm"]["warmup_images"] == 6250  # an int stays
    assert run_identity("norm=brn", "norm.rmax=4") != run_identity("norm=brn")
