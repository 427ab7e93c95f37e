"""The cluster path executed: a sweep of real submitit jobs (its local executor), killed and rerun."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normexp import record
from normexp.compose import compose
from tests.helpers import record_numbers, tiny_run

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

FAULTS = Path(__file__).parent / "faults"
# Two jobs (1 and 2 virtual devices, the per-device protocol), each training seeds 0 and 1 packed as one model.
SWEEP = ("data.devices=1,2", "seed=[0,1]", "data.batch_size=4", "runtime.pack_max_batch=8", "trainer.epochs=3")


def _sweep(image_folder: Path, tmp_path: Path, root: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "normexp.cli.train", "-m", *launcher, *tiny_run(image_folder, tmp_path, root),
            *SWEEP]


def _runs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if not d.name.startswith("."))


def _summaries(root: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/" + record.SUMMARY)}


@pytest.mark.slow
def test_submitit_sweep_killed_and_rerun_finishes_with_the_basic_launchers_records(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = _sweep(image_folder, tmp_path, root, "hydra/launcher=slurm_local")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    held = tmp_path / "held"  # the 2-device job stops at its 20th step (epoch 2 of 3): tests/faults/
    faulty = {**env, "PYTHONPATH": os.pathsep.join([str(FAULTS), env.get("PYTHONPATH", "")]),
              "NORMEXP_HOLD_AT_STEP": "20", "NORMEXP_HOLD_MARKER": str(held)}
    sweep = subprocess.Popen(args, cwd=tmp_path, env=faulty, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # its own process group: the launcher and its jobs
    started = time.time()
    while not (held.exists() and _summaries(root)) and sweep.poll() is None and time.time() - started < 240:
        time.sleep(0.1)  # waits for two events: one job finished, the other held mid-training
    os.killpg(sweep.pid, signal.SIGKILL)  # as a lost node or preemption: every process of the sweep at once
    sweep.wait()
    assert held.exists()  # the fault held the 2-device job
    finished = _summaries(root)
    unfinished = [d for d in _runs(root) if d.name not in finished]
    assert finished and unfinished  # one job's runs had finished; the other's were cut short
    sweeps_before = set((root / ".hydra").iterdir())

    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 finished" in done.stdout + done.stderr  # the end-of-sweep report
    assert {name: mtime for name, mtime in _summaries(root).items() if name in finished} == finished  # untouched
    assert len(_summaries(root)) == 4
    assert any("resuming" in (d / record.LOG).read_text() for d in unfinished)  # from their last epoch
    [sweep_dir] = [d for d in set((root / ".hydra").iterdir()) - sweeps_before if (d / ".submitit").is_dir()]
    jobs = [d for d in (sweep_dir / ".submitit").iterdir() if d.name != "%j"]
    assert len(jobs) == 2
    for job in jobs:
        assert {p.name.split("_", 1)[1] for p in job.iterdir()} == {"submitted.pkl", "0_result.pkl", "0_log.out",
                                                                     "0_log.err"}
        assert pickle.loads((job / f"{job.name}_0_result.pkl").read_bytes())[0] == "success"

    reference = tmp_path / "reference"
    subprocess.run(_sweep(image_folder, tmp_path, reference), cwd=tmp_path, env=env, capture_output=True, check=True,
                   timeout=240)
    assert [d.name for d in _runs(root)] == [d.name for d in _runs(reference)]
    assert {row["pack_size"] for d in _runs(root) for row in record.read_jsonl(d / record.METRICS)} == {2}
    for directory in _runs(root):
        assert record_numbers(directory) == record_numbers(reference / directory.name), directory.name


def _launcher(name: str) -> dict:
    """The launcher's settings as written, interpolations unresolved (hydra.sweep.dir holds the time
    of each compose, which two composes a second apart would read differently)."""
    launcher = OmegaConf.to_container(compose([f"hydra/launcher={name}"], hydra=True).hydra.launcher, resolve=False)
    assert isinstance(launcher, dict)
    return launcher


def test_slurm_and_its_local_rehearsal_share_everything_but_the_executor():
    slurm, local = _launcher("slurm"), _launcher("slurm_local")
    assert slurm["_target_"].endswith("SlurmLauncher") and local["_target_"].endswith("LocalLauncher")
    assert {k: v for k, v in local.items() if k != "_target_"} == {k: slurm[k] for k in local if k != "_target_"}
    assert slurm["gpus_per_node"] == 1 and slurm["cpus_per_task"] >= 2 and slurm["mem_gb"] >= 8
    assert 4 * 60 <= slurm["timeout_min"] <= 24 * 60  # several hours for a claim_gpu job, with margin
    assert slurm["max_num_timeout"] >= 1 and slurm["array_parallelism"] <= 64  # timed-out jobs resume; bounded array
