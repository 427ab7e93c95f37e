"""Hydra callback: at the end of a sweep, what finished, failed, diverged or was rejected.

A job that was rejected (bad setting, missing data) or failed leaves a note in its sweep folder;
the report lists each with its message, and the sweep exits 1 when every job was.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("normexp")

JOB_PROBLEM = "job_problem.json"


class SweepReport(Callback):
    """After `-m`, list the runs under results_root by status, each problem with its log, and the
    jobs that were rejected or failed before any run was recorded."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normexp.record import read_json
        from normexp.tables import load_runs

        root = Path(config.paths.results_root).expanduser()
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")] if sweep_dir.is_dir() else []
        problems = [read_json(path) for path in sorted(sweep_dir.glob(f"*/{JOB_PROBLEM}"))]
        for problem in filter(None, problems):
            log.error("%s job (%s): %s", problem["kind"], " ".join(problem["overrides"]), problem["message"])
        tables = load_runs(root) if root.is_dir() else None
        if tables is None or tables.runs.empty:
            log.warning("sweep ended with no run records under %s", root)
        else:
            counts = tables.runs["status"].value_counts().to_dict()
            log.info("sweep ended; runs under %s: %s", root, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
            for _, run in tables.excluded.iterrows():
                log.warning("%s %s: %s", run["status"], run["run"], run["reason"])
        if problems and len(problems) >= len(jobs):
            log.error("no job of this sweep trained: all %d were rejected or failed", len(problems))
            sys.exit(1)
