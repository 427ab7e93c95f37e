"""Adding a norm as the README tells it: a registry entry and a YAML. A throwaway norm of each kind
(learned scale and shift or none) trains and is analysed, with no other file touched."""

import pytest
from torch import nn

from normexp import record
from normexp.cli.analyze import main as analyze
from normexp.conductor import train_run
from normexp.norms import NORMS
from tests.conftest import run_dir


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
    [summary] = train_run(cfg)
    assert summary["status"] == record.FINISHED and run_dir(cfg).name.startswith(name.replace("_", "-") + "_b8_s0_")
    train_run(make_cfg(f"hydra.searchpath=[file://{conf}]", f"norm={name}", "trainer.epochs=1", "seed=1"))
    assert analyze([str(tmp_path / "runs")]) == 0
    assert name.replace("_", "-") in (tmp_path / "runs" / "tables" / "accuracy.md").read_text()
