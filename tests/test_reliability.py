"""Kills at chosen points, divergence, failing jobs: nothing finished is lost or silently wrong."""

import subprocess
import sys
from pathlib import Path

import pytest

from normexp import record
from normexp.analysis.collect import load_runs
from normexp.train.conductor import train_job
from tests.helpers import record_numbers, run_dir, tiny_run, train_with_fault

TRAIN = [sys.executable, "-m", "normexp.cli.train"]


def _args(image_folder: Path, tmp_path: Path, root: Path, *extra: str) -> list[str]:
    """The command line after `normexp-train`: a tiny run (batch 4: 30 steps per epoch) under `root`."""
    return [*(a for a in extra if a.startswith("-")), *tiny_run(image_folder, tmp_path, root), "data.batch_size=4",
            *(a for a in extra if not a.startswith("-"))]


@pytest.mark.slow
def test_run_killed_anywhere_finishes_with_the_uninterrupted_numbers(image_folder, tmp_path, make_cfg):
    epochs = "trainer.epochs=12"
    reference = make_cfg(epochs, "data.batch_size=4", f"paths.results_root={tmp_path / 'ref'}")
    train_job(reference)
    root = tmp_path / "runs"
    args = _args(image_folder, tmp_path, root, epochs)
    # mid-epoch (step 67 of 360: epoch 3), inside a checkpoint write (after the temp file, before the
    # rename), and Ctrl-C at the start of the resumed run's first epoch; each resumes from its last checkpoint
    faults = [("step", 67, "SIGKILL"), ("checkpoint", 3, "SIGKILL"), ("step", 1, "SIGINT")]
    codes = [train_with_fault(args, kind, at, sig, tmp_path) for kind, at, sig in faults]
    assert codes == [-9, -9, 130]
    (directory,) = [d for d in root.iterdir() if not d.name.startswith(".")]
    epochs_before = len(record.read_jsonl(directory / record.METRICS))
    assert 0 < epochs_before < 12 and not (directory / record.SUMMARY).exists()
    assert subprocess.run([*TRAIN, *args], cwd=tmp_path, capture_output=True).returncode == 0
    assert record_numbers(directory) == record_numbers(run_dir(reference))
    assert not list(directory.glob(".*.tmp"))  # the killed write's temp file was cleaned up
    summary = record.read_json(directory / record.SUMMARY)
    assert summary["final_test_acc"] == record.read_json(run_dir(reference) / record.SUMMARY)["final_test_acc"]


@pytest.mark.slow
def test_sweep_killed_and_rerun_completes_only_what_is_missing(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = _args(image_folder, tmp_path, root, "-m", "norm=bn,ln", "seed=0,1", "trainer.epochs=6")
    # 180 steps per job: killed in the second job, then in the third's checkpoint writes, then in the fourth
    for kind, at in (("step", 250), ("checkpoint", 9), ("step", 200)):
        assert train_with_fault(args, kind, at, "SIGKILL", tmp_path) == -9
    before = {d.name: (d / record.SUMMARY).stat().st_mtime_ns for d in root.iterdir() if (d / record.SUMMARY).exists()}
    assert 0 < len(before) < 4
    assert subprocess.run([*TRAIN, *args], cwd=tmp_path, capture_output=True).returncode == 0
    tables = load_runs(root)
    assert len(tables.runs) == 4 and set(tables.runs["status"]) == {"finished"}
    for name, mtime in before.items():  # finished runs were not retrained
        assert (root / name / record.SUMMARY).stat().st_mtime_ns == mtime
    reference = tmp_path / "reference"
    subprocess.run([*TRAIN, *_args(image_folder, tmp_path, reference, "-m", "norm=bn,ln", "seed=0,1",
                                            "trainer.epochs=6")], cwd=tmp_path, capture_output=True, check=True)
    for directory in (d for d in root.iterdir() if not d.name.startswith(".")):
        assert record_numbers(directory) == record_numbers(reference / directory.name)


def test_diverging_run_is_recorded_with_its_epoch_and_step(make_cfg):
    cfg = make_cfg("optim.lr=1e6", "norm=none", "trainer.epochs=3")
    [summary] = train_job(cfg)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"]["epoch"] == 1 and summary["diverged_at"]["step"] >= 1
    assert not (run_dir(cfg) / record.CHECKPOINT).exists()
    tables = load_runs(run_dir(cfg).parent)
    assert list(tables.runs["status"]) == ["diverged"]
    assert train_job(cfg) == [summary]  # a diverged run counts as done: rerunning does not retrain it


@pytest.mark.slow
def test_failing_job_does_not_stop_the_sweep(image_folder, tmp_path):
    root = tmp_path / "runs"
    # the first job's image folder has no class folders: it is rejected as it loads its data, the second
    # one runs; the report lists the failure
    (tmp_path / "empty").mkdir()
    folders = f"paths.cifar10_folder={tmp_path / 'empty'},{image_folder}"
    args = [a for a in _args(image_folder, tmp_path, root, "-m", "trainer.epochs=1") if "cifar10_folder" not in a]
    done = subprocess.run([*TRAIN, *args, folders], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the sweep ran on, and its exit says that a job did not
    assert f"{tmp_path / 'empty' / 'train'} must hold exactly one folder per CIFAR-10" in done.stdout + done.stderr
    assert "1 of 2 jobs were rejected, failed or held by another process" in done.stdout + done.stderr
    assert len(list(root.glob("*/" + record.SUMMARY))) == 1
    assert "1 finished" in done.stdout + done.stderr


@pytest.mark.slow
def test_two_concurrent_sweeps_on_one_root_train_each_run_once(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = [*TRAIN, *_args(image_folder, tmp_path, root, "-m", "norm=bn,ln", "seed=0,1", "trainer.epochs=3")]
    sweeps = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    for sweep in sweeps:  # a sweep that left runs to the other one says so and exits 1, not 0 as if done
        out, _ = sweep.communicate(timeout=300)
        assert sweep.returncode == 0 or (sweep.returncode == 1 and "held by another process" in out), out
    runs = [d for d in root.iterdir() if not d.name.startswith(".")]
    assert len(runs) == 4
    for directory in runs:
        log = (directory / record.LOG).read_text()
        assert log.count("starting") == 1 and "resuming" not in log, directory.name
        assert record.read_json(directory / record.SUMMARY)["status"] == "finished"


@pytest.mark.slow
def test_a_diverged_run_exits_1_and_a_sweep_reports_only_its_own_runs(image_folder, tmp_path):
    """A diverged run is kept, and the command says so with exit 1 (single run and sweep alike); the
    end-of-sweep report counts the runs of this sweep, apart from the earlier commands' runs."""
    root = tmp_path / "runs"
    earlier = subprocess.run([*TRAIN, *_args(image_folder, tmp_path, root, "trainer.epochs=1", "norm=ln")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert earlier.returncode == 0, earlier.stderr
    single = subprocess.run([*TRAIN, *_args(image_folder, tmp_path, root, "trainer.epochs=2", "norm=none",
                                            "optim.lr=1e6")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert single.returncode == 1 and "1 run(s) diverged" in single.stdout + single.stderr
    sweep = subprocess.run([*TRAIN, *_args(image_folder, tmp_path, root, "-m", "trainer.epochs=2", "norm=none",
                                           "optim.lr=1e6", "seed=1,2")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    out = sweep.stdout + sweep.stderr
    assert sweep.returncode == 1, out
    assert "sweep ended; its 2 run(s): 2 diverged (2 other run(s) under" in out, out
    assert "2 run(s) of this sweep diverged" in out
