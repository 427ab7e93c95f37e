"""Adding a norm as docs/adding_a_norm.md tells it: a registry entry and a YAML. A throwaway norm of each kind
(learned scale and shift or none; batch-dependent, of a new layer class that declares its rules)
trains and is analysed, with no other file touched; one that declares nothing is refused."""

import pytest
import torch
from torch import nn

from normexp import record
from normexp.cli.analyze import main as analyze
from normexp.config import ConfigError
from normexp.nn.norms import NORMS
from normexp.nn.traits import BATCH_NORM, NormTraits
from normexp.train.conductor import train_job
from tests.helpers import run_dir


def _group_norm(affine: bool):
    def builder(groups: int):
        """GroupNorm, with or without its learned per-channel scale and shift."""
        return lambda channels: nn.GroupNorm(groups, channels, affine=affine)
    return builder


@pytest.mark.slow
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
def test_a_registered_norm_with_its_yaml_trains_and_is_analysed(make_cfg, tmp_path, monkeypatch, affine):
    name = f"throwaway_{'affine' if affine else 'plain'}"
    monkeypatch.setitem(NORMS, name, _group_norm(affine))
    conf = tmp_path / "conf"
    (conf / "norm").mkdir(parents=True)
    (conf / "norm" / f"{name}.yaml").write_text(f"name: {name}\ngroups: 2\n")
    cfg = make_cfg(f"hydra.searchpath=[file://{conf}]", f"norm={name}", "trainer.epochs=1", "seed=0")
    [summary] = train_job(cfg)
    assert summary["status"] == record.FINISHED and run_dir(cfg).name.startswith(name.replace("_", "-") + "_b8_s0_")
    train_job(make_cfg(f"hydra.searchpath=[file://{conf}]", f"norm={name}", "trainer.epochs=1", "seed=1"))
    assert analyze([str(tmp_path / "runs")]) == 0
    assert name.replace("_", "-") in (tmp_path / "runs" / "tables" / "accuracy.md").read_text()


class GhostBatchNorm(nn.BatchNorm2d):
    """A batch-dependent layer class of its own (BN with another eps, its batch split into `devices`
    chunks normalized alone) that declares its traits, its per-device split and its packing."""

    norm_traits = BATCH_NORM

    def __init__(self, channels: int, devices: int = 1) -> None:
        super().__init__(channels, eps=1e-3)
        self.devices = devices

    def per_device(self, devices: int) -> "GhostBatchNorm":
        self.devices = devices
        return self

    def packed(self, members: int) -> "GhostBatchNorm":
        return GhostBatchNorm(self.num_features * members, self.devices)

    def forward(self, x):
        if not self.training or self.devices == 1:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm, self).forward(chunk) for chunk in x.chunk(self.devices)])


class UndeclaredBatchNorm(nn.BatchNorm2d):
    """A BatchNorm subclass that declares nothing."""


class UnsplitBatchNorm(nn.BatchNorm2d):
    """A batch-dependent layer class that declares its traits but no per-device split."""

    norm_traits = NormTraits(batch_dependent=True, running_statistics=True)


def _register(monkeypatch, tmp_path, name: str, layer: type) -> str:
    monkeypatch.setitem(NORMS, name, lambda: (lambda channels: layer(channels)))
    conf = tmp_path / "conf"
    (conf / "norm").mkdir(parents=True, exist_ok=True)
    (conf / "norm" / f"{name}.yaml").write_text(f"name: {name}\n")
    return f"hydra.searchpath=[file://{conf}]"


@pytest.mark.slow
def test_a_batch_dependent_norm_of_a_new_class_trains_per_device_and_packed(make_cfg, tmp_path, monkeypatch):
    searchpath = _register(monkeypatch, tmp_path, "ghost", GhostBatchNorm)
    splits = []
    monkeypatch.setattr(GhostBatchNorm, "forward", lambda self, x, real=GhostBatchNorm.forward:
                        splits.append(self.devices if self.training else None) or real(self, x))
    cfg = make_cfg(searchpath, "norm=ghost", "trainer.epochs=1", "data.batch_size=2", "data.devices=2", "seed=[0,1]")
    summaries = train_job(cfg)
    assert [s["status"] for s in summaries] == [record.FINISHED] * 2 and summaries[0]["pack_size"] == 2
    assert set(splits) - {None} == {2}  # every training forward normalized each device's images alone


def test_a_norm_layer_that_declares_no_traits_is_refused_before_anything_is_written(make_cfg, tmp_path, monkeypatch):
    searchpath = _register(monkeypatch, tmp_path, "undeclared", UndeclaredBatchNorm)
    with pytest.raises(ConfigError, match="a UndeclaredBatchNorm norm layer declares no norm_traits"):
        train_job(make_cfg(searchpath, "norm=undeclared", "trainer.epochs=1", "seed=0"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_batch_dependent_layer_that_declares_no_split_is_refused(make_cfg, tmp_path, monkeypatch):
    searchpath = _register(monkeypatch, tmp_path, "unsplit", UnsplitBatchNorm)
    with pytest.raises(ConfigError, match="cannot split a UnsplitBatchNorm layer per device"):
        train_job(make_cfg(searchpath, "norm=unsplit", "trainer.epochs=1", "data.devices=2", "seed=0"))
    with pytest.raises(ConfigError, match="evaluation.batch_statistics=true .* UnsplitBatchNorm"):
        train_job(make_cfg(searchpath, "norm=unsplit", "trainer.epochs=1", "seed=0",
                           "evaluation.batch_statistics=true"))  # one device: the evaluation splits the test set
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused before writing
    one_device = make_cfg(searchpath, "norm=unsplit", "trainer.epochs=1", "seed=0")  # batch statistics off: default
    assert train_job(one_device)[0]["status"] == record.FINISHED
    with pytest.raises(ConfigError, match="cannot pack a UnsplitBatchNorm"):
        train_job(make_cfg(searchpath, "norm=unsplit", "trainer.epochs=1", "data.batch_size=2", "seed=[0,1]"))
