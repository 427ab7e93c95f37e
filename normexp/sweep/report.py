"""The end of a sweep: what finished, failed, diverged or was rejected. A job that was rejected (bad
setting, missing data) or failed leaves a note in its folder (`note_job_problem`); `report` lists
each with its message, counts this sweep's runs by status (apart from earlier commands' runs in the
same results root) and says whether the sweep should exit 1: a job was rejected or failed, or a run
diverged."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from normexp import record
from normexp.files import atomic
from normexp.sweep.progress import PROGRESS

log = logging.getLogger("normexp")

JOB_PROBLEM = "job_problem.json"


def note_job_problem(job_dir: Path, kind: str, message: str, overrides: list[str]) -> None:
    """Leave a note in the job's folder for the end-of-sweep report (`kind`: rejected, failed or held elsewhere)."""
    atomic.write_json(job_dir / JOB_PROBLEM, {"kind": kind, "message": message, "overrides": overrides})


def report(sweep_dir: Path, results_root: Path) -> int:
    """Log the sweep's problems and its runs by status; 1 if a job was rejected or failed or a run
    diverged, else 0."""
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and d.name.isdigit()] if sweep_dir.is_dir() else []
    problems = [record.read_json(path) for path in sorted(sweep_dir.glob(f"*/{JOB_PROBLEM}"))]
    for problem in filter(None, problems):
        log.error("%s job (%s): %s", problem["kind"], " ".join(problem["overrides"]), problem["message"])
    try:
        diverged = _report_runs(results_root, sweep_dir)
    except record.DamagedRecord as error:
        log.error("%s", error)
        return 1
    if problems and len(problems) >= len(jobs):
        log.error("no job of this sweep trained: all %d were rejected, failed or held by another process",
                  len(problems))
        return 1
    if problems:
        log.error("%d of %d jobs were rejected, failed or held by another process (above); the others ran",
                  len(problems), len(jobs))
    if diverged:
        log.error("%d run(s) of this sweep diverged (above): their records are kept and the analysis lists them",
                  diverged)
    return 1 if problems or diverged else 0


def _report_runs(root: Path, sweep_dir: Path) -> int:
    """Log this sweep's runs (those its jobs trained or found done: its progress folder) by status,
    and how many other runs the results root holds; each one not finished with its reason. Returns
    how many of this sweep's runs diverged."""
    ours = {path.stem for path in (sweep_dir / PROGRESS).glob("*.json")}
    folders = record.run_folders(root)
    runs = [(folder.name, *record.status(folder, record.read_summary(folder))) for folder in folders
            if folder.name in ours]
    if not runs:
        log.warning("sweep ended with no run records of its own under %s", root)
        return 0
    counts = Counter(status for _, status, _ in runs)
    others = len(folders) - len(runs)
    log.info("sweep ended; its %d run(s): %s%s", len(runs), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
             f" ({others} other run(s) under {root} are from earlier commands)" if others else "")
    for name, status, reason in runs:
        if status != record.FINISHED:
            log.warning("%s %s: %s", status, name, reason)
    return counts[record.DIVERGED]
