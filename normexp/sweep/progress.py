"""A sweep's progress, kept in its sweep folder so that every job (process or thread) adds to it:
`sweep.json` (its jobs, planned run-epochs and start), one file per run under `progress/` (epochs
done, and trained in this sweep) and one marker per ended job. Every line carries the one ETA: the
run-epochs left at the pace of those this sweep trained. Where the jobs' output does not reach the
console that started the sweep (submitit's launchers write it to files), that process relays the
progress lines (`Relay`)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

from normexp import record
from normexp.files import atomic

log = logging.getLogger("normexp")

SWEEP = "sweep.json"
PROGRESS = "progress"  # the sweep folder's subfolder: one file per run, epochs done and trained
JOB_ENDED = "job_ended"  # a marker in an ended job's folder
# the launchers whose jobs' output goes to files (hydra/launcher=slurm, slurm_local), not to this console
LOGS_ELSEWHERE = ("hydra_plugins.hydra_submitit_launcher.",)
RELAY_EVERY_S = 30.0  # how often the sweep's own process looks for epochs its jobs trained


def start(sweep_dir: Path, jobs: int, run_epochs: Optional[int]) -> None:
    """Record a sweep's start: its job count and planned run-epochs (None: not planned)."""
    atomic.write_json(sweep_dir / SWEEP, {"jobs": jobs, "started": time.time(), "run_epochs": run_epochs})
    log.info("sweep of %d job(s); progress lines follow each job's start and end and each epoch", jobs)


def sweep_of(sweep_dir: Path) -> Optional[dict[str, Any]]:
    """The sweep's record (jobs, start, planned run-epochs), or None outside a sweep."""
    return _read(sweep_dir / SWEEP)


def _tally(sweep_dir: Path) -> tuple[int, int]:
    """The sweep's run-epochs done and, of them, trained in this sweep (its progress files)."""
    runs = [_read(p) or {"done": 0, "trained": 0} for p in (sweep_dir / PROGRESS).glob("*.json")]
    return sum(r["done"] for r in runs), sum(r["trained"] for r in runs)


def _eta(sweep: dict[str, Any], done: int, trained: int) -> str:
    """"; ETA N min" at the pace of the run-epochs this sweep trained, or "" before the first one or
    without a plan."""
    if not sweep.get("run_epochs") or not trained:
        return ""
    left = max(0, sweep["run_epochs"] - done) * (time.time() - sweep["started"]) / trained
    return f"; ETA {left / 60:.0f} min at this sweep's pace"


def epoch_done(sweep_dir: Path, run: str, done: int, trained: bool) -> None:
    """Record that `run` has `done` epochs (`trained`: one more in this sweep); after a trained one,
    log the sweep's run-epochs done with the ETA."""
    path = sweep_dir / PROGRESS / f"{run}.json"
    previous = _read(path) or {"trained": 0}
    atomic.write_json(path, {"done": done, "trained": previous["trained"] + int(trained)})
    if trained:
        _log_progress(sweep_dir, *_tally(sweep_dir))


def _log_progress(sweep_dir: Path, done: int, trained: int) -> None:
    """Log the sweep's run-epochs done with the ETA (nothing without a plan)."""
    sweep = sweep_of(sweep_dir) or {}
    total = sweep.get("run_epochs")
    if total:
        log.info("sweep progress: %d of %d run-epochs done (%.0f%%) after %.0f min%s", done, total,
                 100 * done / total, (time.time() - sweep["started"]) / 60, _eta(sweep, done, trained))


def jobs_log_elsewhere(launcher: Any) -> bool:
    """Whether the jobs of `launcher` (hydra.launcher) write their output to files, not to this console."""
    return str(launcher.get("_target_", "")).startswith(LOGS_ELSEWHERE)


class Relay:
    """The sweep's progress lines in the process that started it, for jobs that log elsewhere
    (`jobs_log_elsewhere`): every RELAY_EVERY_S seconds, a line if the jobs trained run-epochs since."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir, self.trained = sweep_dir, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sweep-progress", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(RELAY_EVERY_S):
            self.look()

    def look(self) -> None:
        done, trained = _tally(self.sweep_dir)
        if trained > self.trained:
            self.trained = trained
            _log_progress(self.sweep_dir, done, trained)

    def stop(self) -> None:
        """Stop watching, after a last look."""
        self._stop.set()
        self._thread.join()
        self.look()


def job_started(sweep_dir: Path, number: int, overrides: list[str]) -> None:
    sweep = sweep_of(sweep_dir)
    if sweep is not None:
        log.info("job %d of %d started (%s)", number, sweep["jobs"], " ".join(overrides))


def job_ended(sweep_dir: Path, job_dir: Path, number: int) -> None:
    """Mark job `number` (its folder `job_dir`) ended and log how many have, with the ETA."""
    sweep = sweep_of(sweep_dir)
    if sweep is None:
        return
    (job_dir / JOB_ENDED).touch()
    ended = len(list(sweep_dir.glob(f"*/{JOB_ENDED}")))
    log.info("job %d ended (jobs ended so far: %d of %d, %.0f min into the sweep%s)", number, ended, sweep["jobs"],
             (time.time() - sweep["started"]) / 60, _eta(sweep, *_tally(sweep_dir)))


def _read(path: Path) -> Optional[dict[str, Any]]:
    """A progress file's object, or None where it is missing or damaged: a sweep's progress lines
    are not worth stopping its training for."""
    try:
        return record.read_json(path)
    except record.DamagedRecord:
        return None
