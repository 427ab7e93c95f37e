"""What a sweep prints on the console that started it: a bar only where one job at a time trains,
each job's end told apart from the count of ended jobs, progress lines relayed from jobs that log to
files (submitit), the runs reported by status through the run record, and a clean Ctrl-C."""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from normexp import record
from normexp.cli.sweep_report import SweepReport
from normexp.compose import compose
from normexp.files import atomic
from normexp.sweep import plan, progress
from normexp.sweep.report import report
from normexp.train import conductor
from normexp.train import progress as step_progress
from tests.helpers import tiny_run

SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def _launcher(*overrides: str):
    if any("slurm" in override for override in overrides):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    return compose(list(overrides), hydra=True).hydra.launcher


@pytest.mark.parametrize("overrides, gpu, at_once", [
    ((), False, 1),  # Hydra's basic launcher: one job after another
    (("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), False, 2),
    (("hydra/launcher=joblib", "hydra.launcher.n_jobs=1"), False, 1),
    (("hydra/launcher=threads",), False, 1),  # n_jobs null: one at a time on a CPU...
    (("hydra/launcher=threads",), True, 6),  # ...every job on a GPU
    (("hydra/launcher=slurm",), True, 6),  # array_parallelism 12, of 6 jobs
])
def test_the_jobs_a_launcher_trains_at_once(overrides, gpu, at_once):
    assert plan.jobs_at_once(_launcher(*overrides), 6, gpu) == at_once


@pytest.mark.parametrize("launcher, elsewhere", [("slurm_local", True), ("slurm", True), ("joblib", False),
                                                 ("threads", False), ("basic", False)])
def test_the_launchers_whose_jobs_log_to_files_are_known(launcher, elsewhere):
    assert progress.jobs_log_elsewhere(_launcher(f"hydra/launcher={launcher}")) == elsewhere


def test_a_job_that_is_not_alone_on_the_console_draws_no_bar_on_a_terminal(make_cfg, monkeypatch):
    """Bars of jobs that train at once would share one line and take each other's log lines (and
    tqdm's lock in each joblib worker leaks a semaphore on Ctrl-C): such jobs log plain lines."""
    bars = []
    monkeypatch.setattr(step_progress.sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(step_progress, "tqdm", lambda **kwargs: bars.append(kwargs) or pytest.fail("a bar"))
    conductor.train_job(make_cfg("trainer.epochs=1", "runtime.progress=true"), alone=False)
    assert bars == []


def test_a_progress_bar_makes_no_multiprocessing_semaphore():
    """A job alone in a joblib worker process (a sweep of one job) still draws its bar; tqdm's
    default lock would add a multiprocessing semaphore that Ctrl-C leaks (resource_tracker's warning)."""
    probe = ("import sys, multiprocessing.synchronize as mp\n"
             "made = []\n"
             "init = mp.SemLock.__init__\n"
             "mp.SemLock.__init__ = lambda self, *a, **k: (made.append(1), init(self, *a, **k))[1]\n"
             "sys.stderr.isatty = lambda: True\n"
             "from normexp.train.progress import StepProgress\n"
             "bar = StepProgress('bn_b8_s0_x', bar=True)\n"
             "bar.start(1, 1, 10)\n"
             "bar.update(5, 10, 8, [2.3])\n"
             "bar.close()\n"
             "print('semaphores:', len(made))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.stdout.strip() == "semaphores: 0", done.stdout + done.stderr
    assert "bn_b8_s0_x epoch 1/1" in done.stderr  # the bar was drawn


def test_a_jobs_end_names_it_apart_from_the_count_of_ended_jobs(tmp_path, caplog):
    progress.start(tmp_path, 4, None)
    (tmp_path / "1").mkdir()  # job 2's folder (Hydra numbers them from 0)
    with caplog.at_level(logging.INFO, logger="normexp"):
        progress.job_ended(tmp_path, tmp_path / "1", 2)
    assert "job 2 ended (jobs ended so far: 1 of 4, 0 min into the sweep)" in caplog.text


def _sweep_config(tmp_path: Path, target: str):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}, "launcher": {"_target_": target},
                                       "sweeper": {"params": None}, "overrides": {"task": []}},
                             "paths": {"results_root": str(tmp_path / "runs")}})


@pytest.mark.parametrize("target, relayed", [(SUBMITIT_LOCAL, True),
                                             ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                              False)])
def test_the_sweeps_process_relays_the_progress_of_jobs_that_log_to_files(tmp_path, caplog, monkeypatch, target,
                                                                          relayed):
    monkeypatch.setattr(progress, "RELAY_EVERY_S", 0.05)
    callback, config = SweepReport(run_epochs=4), _sweep_config(tmp_path, target)
    with caplog.at_level(logging.INFO, logger="normexp"):
        callback.on_multirun_start(config)
        assert pickle.loads(pickle.dumps(callback)).relay is None  # as submitit sends it to each job
        # a job in another process (submitit's) trains an epoch: its progress file, and its line in its own log
        atomic.write_json(tmp_path / "sweep" / progress.PROGRESS / "bn_b8_s0_1234abcd.json", {"done": 1, "trained": 1})
        deadline = time.monotonic() + 10
        while relayed and "sweep progress" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        callback.on_multirun_end(config)
    assert ("sweep progress: 1 of 4 run-epochs done (25%)" in caplog.text) == relayed
    assert caplog.text.count("sweep progress") == relayed  # one line per change, none at the end without one


def _run(root: Path, name: str, status: str | None) -> None:
    """A run folder of `status` (None: unfinished) as far as the sweep's report reads it."""
    record.write_setup(root / name, {"seed": 0}, "seed: 0\n")
    if status:
        record.write_summary(root / name, {"status": status, "diverged_at": {"epoch": 1, "step": 3}})


def test_the_report_counts_this_sweeps_runs_by_status_apart_from_earlier_ones(tmp_path, caplog):
    root, sweep_dir = tmp_path / "runs", tmp_path / "sweep"
    for name, status in (("bn_b8_s0_a", "finished"), ("bn_b8_s1_b", "diverged"), ("bn_b8_s2_c", None),
                         ("gn8_b8_s0_d", "finished")):
        _run(root, name, status)
    for name in ("bn_b8_s0_a", "bn_b8_s1_b", "bn_b8_s2_c"):  # this sweep's: its progress files
        atomic.write_json(sweep_dir / progress.PROGRESS / f"{name}.json", {"done": 1, "trained": 1})
    with caplog.at_level(logging.INFO, logger="normexp"):
        assert report(sweep_dir, root) == 1  # a run diverged
    assert ("sweep ended; its 3 run(s): 1 diverged, 1 finished, 1 unfinished (1 other run(s) under "
            f"{root} are from earlier commands)") in caplog.text
    assert "diverged bn_b8_s1_b: non-finite loss at epoch 1 step 3" in caplog.text
    assert "unfinished bn_b8_s2_c: interrupted" in caplog.text


def _read_until(fd: int, done, seconds: float) -> bytes:
    """What a terminal shows from `fd` until `done(output)` or `seconds` pass (or the terminal closes)."""
    output, deadline = b"", time.monotonic() + seconds
    while not done(output) and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the terminal's last writer has gone
                break
            if not chunk:
                break
            output += chunk
    return output


@pytest.mark.slow
def test_ctrl_c_of_a_parallel_sweep_on_a_terminal_prints_no_bars_and_leaks_nothing(image_folder, tmp_path):
    """Two joblib jobs at once on a terminal, Ctrl-C (SIGINT to the whole foreground group) once
    both train: plain lines, no bar, and no `resource_tracker ... leaked semaphore` warning."""
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "normexp.cli.train", "-m", *tiny_run(image_folder, tmp_path, root),
               "trainer.epochs=500", "runtime.progress=true", "seed=0,1", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2"]
    terminal, side = os.openpty()
    sweep = subprocess.Popen(command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=side, stderr=side,
                             start_new_session=True)
    os.close(side)
    try:
        shown = _read_until(terminal, lambda _: len(list(root.glob("*/" + record.METRICS))) == 2, 300)
        os.killpg(sweep.pid, signal.SIGINT)  # as Ctrl-C: the main process and its workers
        shown += _read_until(terminal, lambda _: False, 120)
        assert sweep.wait(timeout=60) == 130
    finally:
        os.close(terminal)
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    text = shown.decode(errors="replace")
    assert len(list(root.glob("*/" + record.METRICS))) == 2, text
    assert "%|" not in text and "leaked semaphore" not in text, text
    assert "interrupted; finished epochs are kept" in text
