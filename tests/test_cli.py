"""The console entry points as a user meets them: help, exit codes, one-line errors, sweep reports."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from normexp import record


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_help_names_the_app_and_imports_no_torch(tmp_path):
    probe = ("import sys, runpy; sys.argv = ['normexp-train', '--help']\n"
             "try:\n    runpy.run_module('normexp.cli.train', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('torch imported:', 'torch' in sys.modules, 'matplotlib imported:', 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "normexp-train" in done.stdout and "powered by Hydra" not in done.stdout
    assert "torch imported: False matplotlib imported: False" in done.stdout
    analyze = _run("normexp.cli.analyze", "--help", cwd=tmp_path)
    assert analyze.returncode == 0 and "normexp-analyze" in analyze.stdout


def test_an_unwritable_results_root_is_one_line_and_exit_2(tmp_path, image_folder):
    (tmp_path / "a-file").write_text("")
    done = _run("normexp.cli.train", f"paths.results_root={tmp_path / 'a-file' / 'runs'}",
                f"paths.cifar10_folder={image_folder}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "paths.results_root=" in done.stderr + done.stdout and "Traceback" not in done.stderr + done.stdout


@pytest.mark.slow
def test_a_sweep_whose_every_job_is_rejected_lists_them_and_exits_nonzero(tmp_path, image_folder):
    (tmp_path / "empty").mkdir()  # a folder without train/<class>/: caught as each job loads its data
    done = _run("normexp.cli.train", "-m", f"paths.cifar10_folder={tmp_path / 'empty'}",
                f"paths.cache_dir={tmp_path / 'cache'}", f"paths.results_root={tmp_path / 'runs'}", "seed=0,1",
                cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    for value in ("0", "1"):
        assert f"seed={value}): {tmp_path / 'empty' / 'train'} must hold exactly one folder" in out, out
    assert "no job of this sweep trained" in out
    assert "job 1 of 2 started" in out and "jobs ended so far: 2 of 2" in out  # sweep-level (no ETA: nothing trained)


def test_a_sweep_with_a_missing_image_folder_is_refused_before_any_job_starts(tmp_path, image_folder):
    done = _run("normexp.cli.train", "-m", f"paths.cifar10_folder={image_folder},{tmp_path / 'nowhere'}",
                f"paths.results_root={tmp_path / 'runs'}", "seed=0,1", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.startswith(f"normexp-train: CIFAR-10 image folder not found: {tmp_path / 'nowhere'}.")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / ".hydra").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=abc",
     "data.batch_size=abc is invalid: Value 'abc' of type 'str' could not be converted to Integer"),
    ("trainer.epochs=2.5", "trainer.epochs=2.5 is invalid"),
    ("optim.lr=abc", "optim.lr=abc is invalid"),
    ("norm.foo=3", "norm.foo is not a setting (valid keys: name, momentum)"),
    ("data.batchsize=4", "data.batchsize is not a setting (nearest valid key: data.batch_size)"),
    ("+data.batchsize=4", "data.batchsize is not a setting (nearest valid key: data.batch_size)"),
    ("+trainer.epochz=3", "trainer.epochz is not a setting (nearest valid key: trainer.epochs)"),
    ("+optim.lr_typo=3", "optim.lr_typo is not a setting (nearest valid key: optim.lr)"),
    ("norm=foo", "norm=foo is invalid: no conf/norm/foo.yaml; allowed: bn, bn_frozen, bn_precise"),
])
def test_every_config_error_is_one_line_and_exit_2(tmp_path, override, message):
    done = _run("normexp.cli.train", override, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"normexp-train: {message}") and len(done.stderr.strip().splitlines()) == 1


def test_a_bad_value_anywhere_in_a_sweep_is_refused_before_any_job_starts(tmp_path):
    done = _run("normexp.cli.train", "-m", "experiment=claim", "data.batch_size=2,0", f"paths.results_root={tmp_path}",
                cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == ("normexp-train: data.batch_size=0 is invalid: must be an "
                                                            "integer >= 1")
    assert not (tmp_path / ".hydra").exists()


def test_a_group_count_that_fits_no_width_stops_the_sweep_before_any_job(tmp_path):
    """norm.groups=7 of a sweep's second job is refused before the first job trains: one line, exit 2."""
    done = _run("normexp.cli.train", "-m", "norm=gn", "norm.groups=4,7", f"paths.results_root={tmp_path / 'runs'}",
                cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == ("normexp-train: norm.groups=7 does not fit a layer with 16 channels: "
                                   "the group count must divide 16; valid group counts for this width: 1, 2, 4, 8, 16")
    assert not (tmp_path / ".hydra").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_sweeps_started_at_once_get_their_own_sweep_folders(tmp_path):
    args = [sys.executable, "-m", "normexp.cli.train", "-m", f"paths.results_root={tmp_path}",
            f"paths.cache_dir={tmp_path / 'cache'}", f"paths.cifar10_folder={tmp_path / 'empty'}"]
    (tmp_path / "empty").mkdir()  # each job is rejected as it loads its data
    jobs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(2)]
    for job in jobs:
        job.wait(timeout=120)
    assert len(list((tmp_path / ".hydra").glob("multirun_*"))) == 2


def test_analyze_on_only_excluded_runs_names_their_states_and_writes_nothing(tmp_path):
    directory = tmp_path / "bn_b2_s0_x"
    ident = {"data": {"batch_size": 2, "devices": 1}, "model": {"depth": 8, "base_width": 4},
             "norm": {"name": "bn"}, "trainer": {"epochs": 2}, "seed": 0, "data_digest": "d"}
    record.write_setup(directory, ident, "seed: 0\n")
    (directory / record.LOG).write_text("")
    done = _run("normexp.cli.analyze", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1 and "no finished runs" in done.stderr and "1 unfinished" in done.stderr
    assert not (tmp_path / "tables").exists() and not (tmp_path / "report.html").exists()


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="this machine has SLURM")
def test_the_slurm_launcher_without_slurm_is_one_line_and_exit_2(tmp_path):
    done = _run("normexp.cli.train", "-m", "hydra/launcher=slurm", f"paths.results_root={tmp_path / 'runs'}",
                cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("normexp-train: hydra/launcher=slurm needs SLURM (sbatch, srun not found on PATH)")


@pytest.mark.parametrize("versions, problem", [
    ({"torch": "2.14.1+cpu", "torchvision": "0.29.1+cpu"}, None),
    ({"torch": "2.13.0", "torchvision": "0.29.1"},
     "torchvision 0.29.1 is not built for torch 2.13.0 (that is torchvision 0.28.*): "
     "pip install 'torch==2.13.0' 'torchvision==0.28.*' from one index"),
])
def test_a_torchvision_built_for_another_torch_is_named_before_anything_runs(monkeypatch, versions, problem):
    from normexp.cli import preflight

    monkeypatch.setattr(preflight.metadata, "version", versions.__getitem__)
    assert preflight.torchvision_problem() == problem


def test_a_single_run_and_its_one_line_error_print_no_hydra_warning(tmp_path, image_folder):
    """A run without -m has no sweep: the sweep report's callbacks stay silent (no hydra.job.num warning)."""
    from tests.helpers import tiny_run

    done = _run("normexp.cli.train", *tiny_run(image_folder, tmp_path), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    failed = _run("normexp.cli.train", *tiny_run(tmp_path / "nowhere", tmp_path), cwd=tmp_path)
    assert failed.returncode == 2 and "CIFAR-10 image folder not found" in failed.stderr + failed.stdout
    for out in (done.stdout + done.stderr, failed.stdout + failed.stderr):
        assert "Warning" not in out and "hydra.job.num" not in out, out
    lines = (failed.stdout + failed.stderr).strip().splitlines()
    assert "Traceback" not in failed.stderr and [line for line in lines if "not found" in line] == lines[-1:]


def test_an_unwritable_analysis_folder_or_cache_is_one_line_and_exit_2(tmp_path):
    """Write failures are refused up front (a read-only folder; here a path below a file, which even
    root cannot write)."""
    (tmp_path / "a-file").write_text("")
    blocked = tmp_path / "a-file" / "out"
    results = tmp_path / "results"
    results.mkdir()
    analyzed = _run("normexp.cli.analyze", str(results), "--out", str(blocked), cwd=tmp_path)
    trained = subprocess.run([sys.executable, "-m", "normexp.cli.train", "experiment=debug"], cwd=tmp_path, text=True,
                             capture_output=True, timeout=300,
                             env={**os.environ, "NORMEXP_CACHE_DIR": str(blocked), "PYTHONUNBUFFERED": "1"})
    for done, field in ((analyzed, "--out"), (trained, "paths.cache_dir")):
        out = (done.stdout + done.stderr).strip()
        assert done.returncode == 2 and len(out.splitlines()) == 1, out
        assert f"{field}='{blocked}' is not writable" in out, out


@pytest.mark.skipif(Path("/proc/driver/nvidia/gpus").is_dir(), reason="this machine has an NVIDIA GPU")
@pytest.mark.parametrize("args, message", [
    (["-m", "norm=bn,gn", "runtime.device=cuda"], "runtime.device='cuda' is invalid here: this machine has no NVIDIA"),
    (["-m", "experiment=claim_gpu"], "experiment=claim_gpu is a GPU preset and this machine has no NVIDIA GPU"),
    (["experiment=parity_gpu"], "experiment=parity_gpu is a GPU preset"),
])
def test_gpu_jobs_on_a_cpu_machine_are_refused_before_the_sweep_starts(tmp_path, args, message):
    done = _run("normexp.cli.train", *args, f"paths.results_root={tmp_path / 'runs'}", cwd=tmp_path)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode == 2 and len(out.splitlines()) == 1 and message in out, out
    assert not (tmp_path / "runs" / ".hydra").exists()  # refused before Hydra started any job
