"""Experiment presets and launchers compose, and sweeps have no redundant grid points."""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from normexp import record
from normexp.compose import CONF_DIR, compose, sweep_grid
from normexp.config import ConfigError, seeds, step_batch, validate
from normexp.train.harness import run_config, seeded_model
from normexp.train.optim import scaled_lr
from normexp.train.runtime import default_threads, registered_job

PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _compose(*overrides: str, hydra: bool = False):
    return compose(list(overrides), hydra=hydra)


def _grid(experiment: str) -> list[list[str]]:
    return [[o for o in point if not o.startswith("experiment=")] for point in sweep_grid([f"experiment={experiment}"])]


@pytest.mark.parametrize("experiment", PRESETS)
def test_every_grid_point_is_a_distinct_valid_run_in_an_ignored_folder(experiment):
    names = []
    for point in _grid(experiment):
        cfg = _compose(f"experiment={experiment}", *point)
        validate(cfg)
        seeded_model(run_config(cfg, 0))  # group counts fit the model's widths
        names += [record.run_name(record.identity(run_config(cfg, seed), "data")) for seed in seeds(cfg)]
        assert Path(cfg.paths.results_root).parts[0] == "runs"  # never into tracked results/ by default
    assert len(set(names)) == len(names)


def test_claim_is_the_papers_per_device_protocol():
    grid = _grid("claim")
    assert len(grid) == 2 * 6 and {p[1] for p in grid} == {f"data.batch_size={b}" for b in (2, 4, 8, 16, 32, 64)}
    cfg = _compose("experiment=claim", "data.batch_size=4")
    assert seeds(cfg) == [0, 1, 2] and cfg.data.devices == 8 and step_batch(cfg) == 32
    assert scaled_lr(cfg.optim, step_batch(cfg)) == pytest.approx(0.1 * 4 / 32)  # GN paper: 0.1 x N/32
    assert cfg.data.train_subset is None and cfg.trainer.epochs * 50_000 >= 200_000


def test_claim_steps_is_the_images_per_step_protocol():
    cfg = _compose("experiment=claim_steps", "data.batch_size=4")
    assert cfg.data.devices == 1 and scaled_lr(cfg.optim, step_batch(cfg)) == pytest.approx(0.1 * 4 / 32)
    assert cfg.trainer.epochs == _compose("experiment=claim").trainer.epochs


def test_bn_stats_keeps_the_optimizer_batch_fixed():
    for point in _grid("bn_stats"):
        cfg = _compose("experiment=bn_stats", *point)
        assert step_batch(cfg) == 128
    assert _compose("experiment=bn_stats", "data.batch_size=2").data.devices == 64
    with pytest.raises(ConfigError, match="does not divide"):
        validate(_compose("experiment=bn_stats", "data.batch_size=3"))


def test_claim_gpu_is_the_public_cifar10_budget_in_the_per_device_protocol():
    cfg = _compose("experiment=claim_gpu", "norm=gn")
    assert (cfg.model.depth, cfg.trainer.epochs, cfg.norm.groups, cfg.data.devices) == (20, 100, 8, 8)
    assert (cfg.optim.schedule, list(cfg.optim.milestones), cfg.optim.gamma) == ("step", [30, 60, 90], 0.1)
    assert cfg.verdict.require_parity is True and cfg.verdict.max_parity_gap == 1.0 and seeds(cfg) == [0, 1, 2, 3, 4]


def test_parity_gpu_is_claim_gpu_at_the_reference_batch_judged_on_parity_alone():
    grid = _grid("parity_gpu")
    assert sorted(grid) == [["norm=bn", "data.batch_size=32"], ["norm=gn", "data.batch_size=32"]]
    cfg = _compose("experiment=parity_gpu", "norm=gn", "data.batch_size=32")
    gpu = _compose("experiment=claim_gpu", "norm=gn", "data.batch_size=32")
    assert record.identity(run_config(cfg, 0), "d") == record.identity(run_config(gpu, 0), "d")  # same runs
    assert (cfg.verdict.require_small_batch, cfg.verdict.require_parity,
            cfg.verdict.max_parity_gap) == (False, True, 1.0)


def test_converged_completes_claim_at_100_epochs_with_parity_required_within_one_point():
    grid = _grid("converged")
    assert sorted(grid) == sorted([f"norm={n}", f"data.batch_size={b}"] for n in ("bn", "gn") for b in (2, 32))
    cfg = _compose("experiment=converged", "norm=gn", "data.batch_size=32")
    claim = _compose("experiment=claim", "norm=gn", "data.batch_size=32")
    assert (cfg.trainer.epochs, seeds(cfg), cfg.trainer.precision) == (100, [0, 1, 2], None)
    assert {k: v for k, v in cfg.model.items()} == {k: v for k, v in claim.model.items()}
    assert (cfg.optim, cfg.data) == (claim.optim, claim.data)
    assert (cfg.verdict.require_small_batch, cfg.verdict.require_parity,
            cfg.verdict.max_parity_gap) == (True, True, 1.0)
    assert cfg.verdict.gn_loss_margin == claim.verdict.gn_loss_margin and cfg.verdict.metric == "final"
    assert cfg.evaluation.precise_images is None and cfg.evaluation.batch_statistics is False


@pytest.mark.parametrize("preset, on", [("claim", False), ("first_look", False), ("bn_stats", True),
                                        ("bn_stats_frozen", True)])
def test_bns_extra_evaluations_are_on_only_where_they_are_read(preset, on):
    cfg = _compose(f"experiment={preset}", "data.batch_size=8")
    assert (cfg.evaluation.precise_images, cfg.evaluation.batch_statistics) == ((4096, True) if on else (None, False))


def test_groups_ablation_covers_ln_to_in_and_channels_per_group():
    tags = {record.norm_tag(_compose("experiment=groups", p[0]).norm) for p in _grid("groups")}
    assert tags == {"ln", "gn2", "gn4", "gn8", "gn16", "in", "gn-cpg16"}


def test_launchers_compose():
    slurm = _compose("experiment=claim_gpu", "hydra/launcher=slurm", hydra=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1
    joblib = _compose("experiment=claim", "hydra/launcher=joblib", hydra=True).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher")


def test_threads_split_the_cores_between_jobs():
    cores = len(os.sched_getaffinity(0))
    assert default_threads(None, running_jobs=1) == cores
    assert default_threads(-1, running_jobs=1) == 1
    assert default_threads(1, running_jobs=1) == cores
    assert default_threads(2 * cores, running_jobs=1) == 1
    assert default_threads(None, running_jobs=2 * cores) == 1  # another sweep is running: no oversubscription


def test_running_jobs_are_counted_and_forgotten_when_they_end(tmp_path):
    with registered_job(tmp_path) as first:
        assert first == 1
        with registered_job(tmp_path) as second:
            assert second == 2
    with registered_job(tmp_path) as again:
        assert again == 1
    (tmp_path / platform.node() / "999999999.job").write_text("")  # left by a process that is gone
    with registered_job(tmp_path) as after_crash:
        assert after_crash == 1


@pytest.mark.slow
def test_a_tiny_parity_gpu_trains_and_is_judged_on_parity_alone(image_folder, tmp_path):
    """parity_gpu's sweep shrunk to seconds on CPU (depth 8, 1 epoch, 2 seeds): its runs train, and
    the analysis judges parity alone with the preset's criteria, the small-batch half undecided."""
    from normexp.cli.analyze import main as analyze
    from normexp.train.conductor import train_job

    for norm in ("bn", "gn"):
        train_job(_compose("experiment=parity_gpu", f"norm={norm}", "data.batch_size=4", "data.devices=2",
                           "model.depth=8", "model.base_width=8", "trainer.epochs=1", "optim.milestones=[]",
                           "seed=[0,1]", "data.source=folder", f"paths.cifar10_folder={image_folder}",
                           f"paths.cache_dir={tmp_path / 'cache'}", f"paths.results_root={tmp_path / 'runs'}",
                           "runtime.threads=1", "runtime.progress=false", "runtime.device=cpu",
                           "optim.schedule=cosine"))
    tiny = ["--set", "reference_batch=4", "--set", "min_seeds=2",
            "--set", "min_reference_accuracy=0"]  # 2 seeds, 1 epoch
    assert analyze([str(tmp_path / "runs"), *tiny]) == 0
    result = json.loads((tmp_path / "runs" / "verdict.json").read_text())
    assert result["parts"]["small_batch"]["undecided"] and not result["parts"]["small_batch"]["required"]
    parity = result["parts"]["parity"]  # decided, or undecided when the tiny runs tie (no spread)
    assert (result["undecided"], result["holds"]) == (parity["undecided"], parity["holds"]) and parity["required"]
    assert result["criteria"]["max_parity_gap"] == 1.0 and result["criteria_source"]["require_parity"] == "recorded"


def test_normexp_plan_lists_a_presets_jobs_and_runs(capsys):
    from normexp.cli.plan import main as plan

    assert plan(["experiment=first_look", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep plan: 4 job(s), 12 run(s), 12 run-epochs, 2 job(s) at a time")
    assert "job 1: bn_b2x8_s0 bn_b2x8_s1 bn_b2x8_s2 x 1 epochs  (norm=bn data.batch_size=2)" in out
    assert plan(["experiment=first_look", "data.batch_size=0"]) == 2
    assert "data.batch_size=0 is invalid" in capsys.readouterr().err
    assert plan(["experiment=first_look", "hydra/launcher=gpu"]) == 2  # a group option that does not exist
    assert capsys.readouterr().err.startswith("normexp-plan: hydra/launcher=gpu is invalid: no "
                                              "conf/hydra/launcher/gpu.yaml; allowed: basic, joblib")


def test_the_plan_estimates_only_from_runs_on_the_kind_of_device_the_jobs_will_use(tmp_path, capsys):
    """A GPU run's pace is not a CPU job's: the plan names the device its estimate comes from."""
    from normexp.cli.plan import main as plan

    cfg = _compose("experiment=debug", "runtime.device=cpu")
    directory = tmp_path / "bn_b8_s0_x"
    record.write_setup(directory, record.identity(cfg, "digest"), "seed: 0\n")
    summary = {"status": record.FINISHED, "epochs_done": 2, "compute_seconds": 60.0, "device": "NVIDIA H200"}
    record.write_summary(directory, summary)
    command = ["experiment=debug", f"paths.results_root={tmp_path}", "seed=1"]  # the same setup, another run
    assert plan([*command, "runtime.device=cpu"]) == 0
    assert "no finished run of these setups on a cpu to estimate from" in capsys.readouterr().out
    record.write_summary(directory, {**summary, "device": "cpu"})
    assert plan([*command, "runtime.device=cpu"]) == 0
    assert "expected about 1 min at the pace of finished runs of the same setups on cpu" in capsys.readouterr().out


def _reproduce(tmp_path: Path, **env: str) -> tuple[list[str], list[str]]:
    """scripts/reproduce.sh run with stand-ins for normexp-train, normexp-analyze and pip that write
    their arguments down (nothing installs or trains): the train and analyze arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(parents=True)
    for tool in ("normexp-train", "normexp-analyze"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "$@" > "{log}.{tool}"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\ncase "$1" in -I|-m) exit 0;; esac\nexec "{sys.executable}" "$@"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    script = CONF_DIR.parent / "scripts" / "reproduce.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                               "PYTHONPATH": str(CONF_DIR.parent), **env})
    assert done.returncode == 0, done.stderr
    return [Path(f"{log}.{tool}").read_text().split() for tool in ("normexp-train", "normexp-analyze")]


def test_reproduce_sh_trains_and_analyses_the_folder_the_preset_names(tmp_path):
    """`EXPERIMENT=first_look bash scripts/reproduce.sh` and `normexp-train -m experiment=first_look`
    write one folder (the preset's paths.results_root), so neither retrains the other's runs; OUT
    moves both the runs and the analysis."""
    preset = _compose("experiment=first_look").paths.results_root
    for env, folder in (({}, preset), ({"OUT": "/tmp/x"}, "/tmp/x")):
        train, analyze = _reproduce(tmp_path / folder.strip("/").replace("/", "_"), EXPERIMENT="first_look", **env)
        roots = [a.split("=", 1)[1] for a in train if a.startswith("paths.results_root=")]
        assert (roots[-1] if roots else preset) == folder and analyze == [folder]
