"""`hydra/launcher=threads` (normexp.sweep.launcher): a sweep's jobs in one process, on CPU one after
another or, with n_jobs, in threads as on a GPU; the records are the basic launcher's, exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from normexp import record
from normexp.compose import compose
from normexp.sweep.launcher import _console_logging
from tests.helpers import record_numbers, tiny_run, train_with_fault

# Two jobs (1 and 2 virtual devices), each training seeds 0 and 1 packed as one model.
SWEEP = ("data.devices=1,2", "seed=[0,1]", "data.batch_size=4", "runtime.pack_max_batch=8", "trainer.epochs=3")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _sweep(image_folder: Path, tmp_path: Path, root: Path, *launcher: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "normexp.cli.train", "-m", *launcher, *tiny_run(image_folder, tmp_path, root), *SWEEP]
    return subprocess.run(args, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)


def _runs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if not d.name.startswith("."))


def test_the_console_of_jobs_at_once_is_the_job_logging_without_its_files():
    config = compose(["hydra.job_logging.formatters.simple.format='[${hydra.job.name}] %(name)s %(message)s'"],
                     hydra=True)
    console = OmegaConf.to_container(_console_logging(config), resolve=True)
    assert list(console["handlers"]) == ["console"] and console["root"]["handlers"] == ["console"]
    assert console["formatters"]["simple"]["format"].endswith("] %(name)s %(message)s")  # its references resolve
    assert "file" in config.hydra.job_logging.handlers  # the sweep's own config is untouched
    assert OmegaConf.to_container(_console_logging(compose(["hydra/job_logging=none"], hydra=True)))["root"] is None


@pytest.mark.slow
@pytest.mark.parametrize("n_jobs", ["null", "2"])
def test_one_process_sweep_records_what_the_basic_launcher_records(image_folder, tmp_path, n_jobs):
    ours = _sweep(image_folder, tmp_path, tmp_path / "threads", "hydra/launcher=threads",
                  f"hydra.launcher.n_jobs={n_jobs}")
    assert ours.returncode == 0, ours.stdout + ours.stderr
    out = ours.stdout + ours.stderr
    assert "in this process" in out and "4 finished" in out and "sweep progress:" in out  # launch line, report
    basic = _sweep(image_folder, tmp_path, tmp_path / "basic")
    assert basic.returncode == 0, basic.stdout + basic.stderr
    assert [d.name for d in _runs(tmp_path / "threads")] == [d.name for d in _runs(tmp_path / "basic")]
    for directory in _runs(tmp_path / "threads"):
        assert record_numbers(directory) == record_numbers(tmp_path / "basic" / directory.name), directory.name
        other_job = [d.name for d in _runs(tmp_path / "threads") if ("x2_" in d.name) != ("x2_" in directory.name)]
        log = (directory / record.LOG).read_text()
        assert not any(name in log for name in other_job)  # each run's log: its own job's lines only
        assert f"[normexp.run.{directory.name}][INFO] - epoch 3/3" in out  # the console names the run


@pytest.mark.slow
def test_one_process_sweep_killed_mid_training_resumes_to_the_same_records(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = ["-m", "hydra/launcher=threads", "hydra.launcher.n_jobs=2", *tiny_run(image_folder, tmp_path, root), *SWEEP]
    # 90 steps per job (30 per epoch); both jobs step in turn: the kill lands in both jobs' epoch 2 or 3
    assert train_with_fault(args, "step", 130, "SIGKILL", tmp_path) == -9
    assert not all((d / record.SUMMARY).exists() for d in _runs(root))
    assert any(record.read_jsonl(d / record.METRICS) for d in _runs(root))
    done = subprocess.run([sys.executable, "-m", "normexp.cli.train", *args], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any("resuming" in (d / record.LOG).read_text() for d in _runs(root))
    reference = _sweep(image_folder, tmp_path, tmp_path / "reference")
    assert reference.returncode == 0
    for directory in _runs(root):  # a kill can leave the seeds at different epochs, which resume unpacked
        assert _unpacked(directory) == _unpacked(tmp_path / "reference" / directory.name), directory.name


def test_at_most_16_jobs_share_a_gpu_so_no_two_share_a_pooled_stream():
    from normexp.sweep.launcher import MAX_CUDA_JOBS, concurrent_jobs

    assert 2 * MAX_CUDA_JOBS == 32  # torch's pool per device and priority; each job takes two streams
    assert concurrent_jobs(None, 21, cuda=True) == 16 and concurrent_jobs(40, 63, cuda=True) == 16
    assert concurrent_jobs(None, 12, cuda=True) == 12 and concurrent_jobs(3, 12, cuda=True) == 3
    assert concurrent_jobs(None, 21, cuda=False) == 1 and concurrent_jobs(2, 21, cuda=False) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_16_jobs_of_two_streams_each_get_32_distinct_streams():
    from normexp.sweep.launcher import MAX_CUDA_JOBS

    streams = [torch.cuda.Stream() for _ in range(2 * MAX_CUDA_JOBS)]  # as MAX_CUDA_JOBS jobs take them
    assert len({s.cuda_stream for s in streams}) == 2 * MAX_CUDA_JOBS


def _unpacked(directory: Path) -> list[dict]:
    """A run's reproducible epoch records without `pack_size`: how it trained, not what it computed."""
    return [{k: v for k, v in row.items() if k != "pack_size"} for row in record_numbers(directory)]
