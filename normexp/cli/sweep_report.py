"""Hydra callback: a sweep's progress, and at its end what finished, failed, diverged or was rejected.

At the start of a sweep the number of its jobs is written to its sweep folder; each job logs
"job i of n" when it starts and, when it ends, how many have ended and an ETA. A job that was
rejected (bad setting, missing data) or failed leaves a note in its sweep folder; the final report
lists each with its message, counts this sweep's runs by status (apart from earlier commands' runs in
the same results root), and the sweep exits 1 when any job was rejected or failed, or a run diverged.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("normexp")

JOB_PROBLEM = "job_problem.json"
SWEEP = "sweep.json"
JOB_ENDED = "job_ended"


def _job_count(config: DictConfig) -> int:
    """How many jobs the sweep makes of the preset's grid and the command line's overrides."""
    from normexp.compose import grid

    return len(grid(config.hydra.sweeper.get("params") or {}, list(config.hydra.overrides.task)))


class SweepReport(Callback):
    """Progress lines per job, and after `-m` the runs under results_root by status, each problem
    with its log, and the jobs that were rejected or failed before any run was recorded."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from normexp.cli.plan import PLANNED
        from normexp.files import atomic

        total = _job_count(config)
        atomic.write_json(Path(config.hydra.sweep.dir) / SWEEP, {"jobs": total, "started": time.time(),
                                                                   "run_epochs": PLANNED.get("run_epochs")})
        log.info("sweep of %d job(s); progress lines follow each job's start and end", total)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = _sweep(config)
        if sweep is not None:
            log.info("job %d of %d started (%s)", HydraConfig.get().job.num + 1, sweep["jobs"],
                     " ".join(HydraConfig.get().overrides.task))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        sweep = _sweep(config)
        if sweep is None:
            return
        output = Path(HydraConfig.get().runtime.output_dir)
        (output / JOB_ENDED).touch()
        ended = len(list(Path(config.hydra.sweep.dir).glob(f"*/{JOB_ENDED}")))
        elapsed = time.time() - sweep["started"]
        eta = elapsed / ended * (sweep["jobs"] - ended)
        log.info("job %d of %d ended; %d of %d ended after %.0f min, ETA %.0f min (at the pace so far)",
                 HydraConfig.get().job.num + 1, sweep["jobs"], ended, sweep["jobs"], elapsed / 60, eta / 60)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normexp.record import read_json

        root = Path(config.paths.results_root).expanduser()
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = ([d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()]
                if sweep_dir.is_dir() else [])  # job folders
        problems = [read_json(path) for path in sorted(sweep_dir.glob(f"*/{JOB_PROBLEM}"))]
        for problem in filter(None, problems):
            log.error("%s job (%s): %s", problem["kind"], " ".join(problem["overrides"]), problem["message"])
        diverged = _report_runs(root, sweep_dir)
        if problems and len(problems) >= len(jobs):
            log.error("no job of this sweep trained: all %d were rejected or failed", len(problems))
            sys.exit(1)
        if problems:
            log.error("%d of %d jobs were rejected or failed (above); the others ran", len(problems), len(jobs))
        if diverged:
            log.error("%d run(s) of this sweep diverged (above): their records are kept and the analysis lists them",
                      diverged)
        if problems or diverged:
            sys.exit(1)


def _report_runs(root: Path, sweep_dir: Path) -> int:
    """Log this sweep's runs (those its jobs trained or found done: its progress folder) by status,
    and how many other runs the results root holds; each one not finished with its reason. Returns
    how many of this sweep's runs diverged."""
    from normexp.analysis.collect import load_runs
    from normexp.record import DIVERGED, FINISHED
    from normexp.train.progress import PROGRESS

    ours = {path.stem for path in (sweep_dir / PROGRESS).glob("*.json")}
    tables = load_runs(root) if root.is_dir() else None
    runs = tables.runs[tables.runs["run"].isin(ours)] if tables is not None and not tables.runs.empty else None
    if runs is None or runs.empty:
        log.warning("sweep ended with no run records of its own under %s", root)
        return 0
    counts = runs["status"].value_counts().to_dict()
    others = len(tables.runs) - len(runs)
    log.info("sweep ended; its %d run(s): %s%s", len(runs), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             f" ({others} other run(s) under {root} are from earlier commands)" if others else "")
    for _, run in runs[runs["status"] != FINISHED].iterrows():
        log.warning("%s %s: %s", run["status"], run["run"], run["reason"])
    return int((runs["status"] == DIVERGED).sum())


def _sweep(config: DictConfig) -> dict | None:
    """The sweep's job count and start time, or None outside a sweep."""
    try:
        return json.loads((Path(config.hydra.sweep.dir) / SWEEP).read_text())
    except (OSError, ValueError, AttributeError):
        return None
