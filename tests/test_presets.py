"""Experiment presets and launchers compose, and sweeps have no redundant grid points."""

import itertools
import os

import pytest
from hydra import compose, initialize_config_dir

from normexp import records
from normexp.config import seeds, validate
from normexp.train import CONF_DIR, default_threads
from normexp.trainer import build_model, member_config


def _compose(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def _grid(experiment: str) -> list[list[str]]:
    params = _compose(f"experiment={experiment}", hydra=True).hydra.sweeper.params
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(point) for point in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", ["claim", "claim_gpu", "groups", "norms", "smoke"])
def test_every_grid_point_is_a_distinct_valid_run(experiment):
    names = []
    for point in _grid(experiment):
        cfg = _compose(f"experiment={experiment}", *point)
        validate(cfg)
        build_model(cfg)  # group counts fit the model's widths
        names += [records.run_name(member_config(cfg, seed)) for seed in seeds(cfg)]
    assert len(set(names)) == len(names)


def test_claim_sweeps_bn_and_gn_over_batch_2_to_64_with_three_packed_seeds():
    grid = _grid("claim")
    assert len(grid) == 2 * 6
    cfg = _compose("experiment=claim")
    assert seeds(cfg) == [0, 1, 2]
    assert cfg.trainer.epochs >= 1 and cfg.results_root == "results/claim/runs"
    assert {p[1] for p in grid} == {f"data.batch_size={b}" for b in (2, 4, 8, 16, 32, 64)}


def test_claim_gpu_is_the_public_cifar10_setting():
    cfg = _compose("experiment=claim_gpu", "norm=gn")
    assert (cfg.model.depth, cfg.trainer.epochs, cfg.norm.groups) == (20, 100, 8)
    assert (cfg.optim.lr, cfg.optim.ref_batch_size, cfg.optim.schedule) == (0.1, 32, "step")
    assert list(cfg.optim.milestones) == [30, 60, 90] and cfg.optim.gamma == 0.1


def test_groups_ablation_covers_ln_to_in_and_channels_per_group():
    widths = {records.norm_tag(_compose("experiment=groups", p[0]).norm) for p in _grid("groups")}
    assert widths == {"ln", "gn2", "gn4", "gn8", "gn16", "in", "gn-cpg16"}


def test_launchers_compose():
    slurm = _compose("experiment=claim_gpu", "hydra/launcher=slurm", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1
    joblib = _compose("experiment=claim", "hydra/launcher=joblib", hydra=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher")


def test_parallel_jobs_split_the_cores():
    cores = os.cpu_count()
    assert default_threads(None) is None
    assert default_threads(-1) == 1
    assert default_threads(1) == cores
    assert default_threads(2 * cores) == 1
