import pytest

"""Kills at random points, divergence, failing jobs: nothing finished is lost or silently wrong."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from normexp import record
from normexp.analysis.collect import load_runs
from normexp.train.conductor import train_run
from tests.conftest import record_numbers, run_dir


def _args(image_folder: Path, tmp_path: Path, root: Path, *extra: str) -> list[str]:
    flags = [a for a in extra if a.startswith("-")]
    overrides = [a for a in extra if not a.startswith("-")]
    return [sys.executable, "-m", "normexp.cli.train", *flags, f"paths.cifar10_folder={image_folder}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.results_root={root}", "model.base_width=4", "data.batch_size=4", "runtime.threads=1",
            "trainer.log_every=5", *overrides]


def _kill_at_random(args: list[str], cwd: Path, root: Path, rng: random.Random, kills: int,
                    sig: int = signal.SIGKILL) -> int:
    """Start the command; once it is training (a run log is written), kill it after a random delay.

    Repeats `kills` times and returns how many attempts were really cut short.
    """
    cut = 0
    for _ in range(kills):
        started = time.time()
        process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and time.time() - started < 120:
            if any(log.stat().st_mtime >= started for log in root.glob("*/" + record.LOG)):
                break
            time.sleep(0.05)
        try:
            process.wait(timeout=rng.uniform(0.0, 2.0))
        except subprocess.TimeoutExpired:
            process.send_signal(sig)
            process.wait()
            cut += 1
    return cut


@pytest.mark.slow
def test_run_killed_at_random_points_finishes_with_the_uninterrupted_numbers(image_folder, tmp_path, make_cfg):
    epochs = "trainer.epochs=12"
    reference = make_cfg(epochs, "data.batch_size=4", "model.base_width=4", f"paths.results_root={tmp_path / 'ref'}")
    train_run(reference)
    root = tmp_path / "runs"
    args = _args(image_folder, tmp_path, root, epochs)
    rng = random.Random(0)
    cut = _kill_at_random(args, tmp_path, root, rng, 3) + _kill_at_random(args, tmp_path, root, rng, 1, signal.SIGINT)
    print(f"run: {cut} of 4 kills landed during training")
    assert cut >= 2  # most attempts were really interrupted
    assert subprocess.run(args, cwd=tmp_path, capture_output=True).returncode == 0
    (directory,) = [d for d in root.iterdir() if not d.name.startswith(".")]
    assert record_numbers(directory) == record_numbers(run_dir(reference))
    assert not list(directory.glob(".*.tmp"))
    summary = record.read_json(directory / record.SUMMARY)
    assert summary["final_test_acc"] == record.read_json(run_dir(reference) / record.SUMMARY)["final_test_acc"]


@pytest.mark.slow
def test_sweep_killed_and_rerun_completes_only_what_is_missing(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = _args(image_folder, tmp_path, root, "-m", "norm=bn,ln", "seed=0,1", "trainer.epochs=6")
    cut = _kill_at_random(args, tmp_path, root, random.Random(1), kills=3)
    print(f"sweep: {cut} of 3 kills landed during training")
    assert cut >= 1  # the rerun below really had something to resume
    before = {d.name: (d / record.SUMMARY).stat().st_mtime_ns for d in root.iterdir() if (d / record.SUMMARY).exists()}
    assert subprocess.run(args, cwd=tmp_path, capture_output=True).returncode == 0
    tables = load_runs(root)
    assert len(tables.runs) == 4 and set(tables.runs["status"]) == {"finished"}
    for name, mtime in before.items():  # finished runs were not retrained
        assert (root / name / record.SUMMARY).stat().st_mtime_ns == mtime
    reference = tmp_path / "reference"
    subprocess.run(_args(image_folder, tmp_path, reference, "-m", "norm=bn,ln", "seed=0,1", "trainer.epochs=6"),
                   cwd=tmp_path, capture_output=True, check=True)
    for directory in (d for d in root.iterdir() if not d.name.startswith(".")):
        assert record_numbers(directory) == record_numbers(reference / directory.name)


def test_diverging_run_is_recorded_with_its_epoch_and_step(make_cfg):
    cfg = make_cfg("optim.lr=1e6", "norm=none", "trainer.epochs=3")
    [summary] = train_run(cfg)
    assert summary["status"] == "diverged"
    assert summary["diverged_at"]["epoch"] == 1 and summary["diverged_at"]["step"] >= 1
    assert not (run_dir(cfg) / record.CHECKPOINT).exists()
    tables = load_runs(run_dir(cfg).parent)
    assert list(tables.runs["status"]) == ["diverged"]
    assert train_run(cfg) == [summary]  # a diverged run counts as done: rerunning does not retrain it


@pytest.mark.slow
def test_failing_job_does_not_stop_the_sweep(image_folder, tmp_path):
    root = tmp_path / "runs"
    # G=3 fits no layer: those jobs fail at build time, the others run; the report lists the failures
    done = subprocess.run(_args(image_folder, tmp_path, root, "-m", "norm=gn", "norm.groups=3,2", "trainer.epochs=1"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # the sweep ran on, and its exit says that a job did not
    assert "norm.groups=3 does not fit a layer with 4 channels" in done.stdout + done.stderr
    assert "1 of 2 jobs were rejected or failed" in done.stdout + done.stderr
    assert [path.parent.name.split("_")[0] for path in root.glob("*/" + record.SUMMARY)] == ["gn2"]
    assert "1 finished" in done.stdout + done.stderr


@pytest.mark.slow
def test_two_concurrent_sweeps_on_one_root_train_each_run_once(image_folder, tmp_path):
    root = tmp_path / "runs"
    args = _args(image_folder, tmp_path, root, "-m", "norm=bn,ln", "seed=0,1", "trainer.epochs=3")
    first = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert first.wait(timeout=300) == 0 and second.wait(timeout=300) == 0
    runs = [d for d in root.iterdir() if not d.name.startswith(".")]
    assert len(runs) == 4
    for directory in runs:
        log = (directory / record.LOG).read_text()
        assert log.count("starting") == 1 and "resuming" not in log, directory.name
        assert record.read_json(directory / record.SUMMARY)["status"] == "finished"
