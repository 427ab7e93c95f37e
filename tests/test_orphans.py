"""A sweep's workers die with its main process, and a command that trained nothing because another
process holds its runs says so and exits nonzero."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normexp import record
from tests.helpers import run_dir, tiny_run


def _children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.mark.slow
def test_killing_a_joblib_sweep_ends_its_workers(image_folder, tmp_path):
    root = tmp_path / "runs"
    command = [sys.executable, "-m", "normexp.cli.train", "-m", *tiny_run(image_folder, tmp_path, root),
               "trainer.epochs=500", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    main = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        assert _wait(lambda: len(list(root.glob(".hydra/multirun_*/progress/*.json"))) == 2, 240)  # both train
        workers += [pid for pid in _children(main.pid) if b"loky" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        trainers = [pid for pid in workers if b"popen_loky" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(trainers) == 2  # besides them, loky's resource tracker, which must end too
        main.send_signal(signal.SIGKILL)
        main.wait()
        assert _wait(lambda: not any(map(_alive, workers)), 30), "workers outlived the sweep's main process"
    finally:
        for pid in [main.pid, *workers]:  # only what this test started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_a_run_held_by_another_process_is_not_reported_done(make_cfg, image_folder, tmp_path):
    with record.claim(run_dir(make_cfg())) as held:
        assert held
        done = subprocess.run([sys.executable, "-m", "normexp.cli.train", *tiny_run(image_folder, tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "is being trained by another process" in out and "this command trained nothing for them" in out
