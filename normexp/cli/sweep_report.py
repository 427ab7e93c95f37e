"""Hydra callback: a sweep's progress lines and its end-of-sweep report (normexp.sweep).

The planned run-epochs come from the command line's plan (normexp-train sets the callback's
`run_epochs`); each job logs "job i of n started" and "job i ended", with the sweep's ETA (where
the jobs' output goes to files, as under submitit, the sweep's own process relays the progress
lines), and the sweep exits 1 when any job was rejected, failed or held by another process, or a
run diverged.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from normexp.sweep import progress
from normexp.sweep.report import report


def _job_count(config: DictConfig) -> int:
    """How many jobs the sweep makes of the preset's grid and the command line's overrides."""
    from normexp.compose import grid

    return len(grid(config.hydra.sweeper.get("params") or {}, list(config.hydra.overrides.task)))


def _in_sweep() -> bool:
    """Whether this job is one of a sweep's (-m): a single run has no job number and no sweep progress."""
    return HydraConfig.get().mode == RunMode.MULTIRUN


class SweepReport(Callback):
    """Progress lines per job, and after `-m` the runs under results_root by status, each problem
    with its log, and the jobs that were rejected or failed before any run was recorded."""

    def __init__(self, run_epochs: Optional[int] = None) -> None:
        self.run_epochs = run_epochs
        self.relay: Optional[progress.Relay] = None

    def __getstate__(self) -> dict[str, Any]:
        """Submitit pickles the launcher, callbacks included, for each job: the relay (a thread of
        the sweep's own process) stays behind."""
        return {**self.__dict__, "relay": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        progress.start(sweep_dir, _job_count(config), self.run_epochs)
        if progress.jobs_log_elsewhere(config.hydra.launcher):
            self.relay = progress.Relay(sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _in_sweep():
            return
        progress.job_started(Path(config.hydra.sweep.dir), HydraConfig.get().job.num + 1,
                             list(HydraConfig.get().overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _in_sweep():
            return
        progress.job_ended(Path(config.hydra.sweep.dir), Path(HydraConfig.get().runtime.output_dir),
                           HydraConfig.get().job.num + 1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.relay is not None:
            self.relay.stop()
        if report(Path(config.hydra.sweep.dir), Path(config.paths.results_root).expanduser()):
            sys.exit(1)
