"""What a sweep will do before it starts: its jobs, their runs and epochs, and an expected time
from the pace of finished runs of the same setup (the sweep's own results root, and the
committed results/), for the run-epochs not yet recorded below the results root (what a rerun
skips or resumes). Torch-free; `normexp-plan OVERRIDES` (normexp.cli.plan) prints it,
`normexp-train -m` too, and hands the planned run-epochs to the sweep's progress lines."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

from omegaconf import DictConfig, OmegaConf

from normexp import record
from normexp.locations import CONF_DIR
from normexp.sweep.launcher import THREADS_LAUNCHER, concurrent_jobs
from normexp.sweep.recorded import Recorded

COMMITTED = CONF_DIR.parent / "results"


@dataclass(frozen=True)
class Job:
    """One job of a sweep: its overrides, the runs it trains (one per seed) and their epochs."""

    overrides: tuple[str, ...]
    labels: tuple[str, ...]  # each run's name without its hash, e.g. bn_b2x8_s0
    epochs: int
    setup: tuple[Any, ...]  # what sets a run's pace (record.pace_setup)
    done: tuple[int, ...] = ()  # each run's epochs already recorded (an ended run: all of them); () none

    def left(self) -> int:
        """The job's run-epochs still to train."""
        return len(self.labels) * self.epochs - sum(self.done)


def run_epochs(jobs: Sequence[Job]) -> int:
    """The sweep's work in run-epochs: every run of every job times its epochs, done or not."""
    return sum(len(j.labels) * j.epochs for j in jobs)


def job_of(overrides: Sequence[str], cfg: DictConfig, recorded: Optional[Recorded] = None) -> Job:
    """The job of `overrides` (composed as `cfg`), with its runs' epochs found in `recorded`."""
    from normexp.config import seeds

    norm = cast("dict[str, Any]", OmegaConf.to_container(cfg.norm, resolve=True))
    data = cfg.data
    labels = tuple(record.run_label(norm, data.batch_size, data.devices, seed) for seed in seeds(cfg))
    done = tuple(recorded.epochs_done(cfg, seed) for seed in seeds(cfg)) if recorded else ()
    return Job(tuple(overrides), labels, cfg.trainer.epochs,
               record.pace_setup(record.norm_tag(norm), data.batch_size, data.devices, cfg.model.depth,
                                 cfg.model.base_width, data.train_subset, cfg.trainer.precision,
                                 device_kind(cfg.runtime.device)), done)


def device_kind(device: str) -> str:
    """"gpu" or "cpu": where a job of `runtime.device` will train. For "auto", whether this machine
    has an NVIDIA driver loaded (/proc/driver/nvidia), so the plan stays torch-free."""
    if device == "auto":
        return "gpu" if Path("/proc/driver/nvidia/gpus").is_dir() else "cpu"
    return "gpu" if device == "cuda" else "cpu"


@dataclass(frozen=True)
class Pace:
    """Seconds per run-epoch of one setup's finished runs, and the devices they ran on."""

    seconds: float
    devices: frozenset[str]


def recorded_pace(roots: Sequence[Path]) -> dict[tuple[Any, ...], Pace]:
    """Seconds per run-epoch of finished runs by setup (their compute share: a packed run's is
    1/K of its job's wall time), averaged over the runs found below `roots`, with their devices.
    Reads only each run's identity and summary, so it takes a moment even over every committed run."""
    found: dict[tuple[Any, ...], list[tuple[float, str]]] = {}  # setup -> (seconds per epoch, device) per run
    for root in (r for r in roots if r.is_dir()):
        for folder in (path.parent for path in root.rglob(record.SUMMARY)):
            try:
                summary, ident = record.read_summary(folder), record.read_identity(folder)
            except record.DamagedRecord:
                continue  # the analysis, and training the run, name it
            if not summary or not ident or summary.get("status") != record.FINISHED or not summary.get("epochs_done"):
                continue
            c = record.columns(ident)
            device = str(summary.get("device", "cpu"))
            key = record.pace_setup(c["norm"], c["batch_size"], c["devices"], c["depth"], c["base_width"],
                                    c["train_subset"], ident["trainer"].get("precision"),
                                    "cpu" if device == "cpu" else "gpu")
            found.setdefault(key, []).append((summary["compute_seconds"] / summary["epochs_done"], device))
    return {key: Pace(sum(s for s, _ in runs) / len(runs), frozenset(d for _, d in runs))
            for key, runs in found.items()}


def _done_note(job: Job) -> str:
    """"  [done]", "  [done: bn_b2_s0 1/3 ...]" (runs with epochs recorded), or ""."""
    if not any(job.done):
        return ""
    if not job.left():
        return "  [done]"
    return "  [done: " + " ".join(f"{label} {n}/{job.epochs}" for label, n in zip(job.labels, job.done) if n) + "]"


def _headline(jobs: Sequence[Job], parallel: int) -> str:
    """The plan's first line: jobs, runs and run-epochs, those left when some are already done."""
    runs, total = sum(len(j.labels) for j in jobs), run_epochs(jobs)
    left = sum(j.left() for j in jobs)
    work = f"{total} run-epochs"
    if left < total:
        ended = sum(n == j.epochs for j in jobs for n in j.done)
        work = (f"{left} run-epochs left of {total} (already done: {total - left} run-epochs; "
                f"{ended} of {runs} run(s) ended)")
    return f"sweep plan: {len(jobs)} job(s), {runs} run(s), {work}, {parallel} job(s) at a time"


def describe(jobs: Sequence[Job], parallel: int, pace: dict[tuple[Any, ...], Pace]) -> str:
    """The plan in a few lines: jobs, runs, run-epochs (and what is already done) and, where every
    job's setup has a recorded pace, the expected time of what is left with `parallel` jobs at once."""
    lines = [_headline(jobs, parallel)]
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    lines += [f"  job {i}: {' '.join(j.labels)} x {j.epochs} epochs  "
              f"({' '.join(o for o in j.overrides if o not in shared)}){_done_note(j)}"
              for i, j in enumerate(jobs, start=1)]
    if jobs and not any(j.left() for j in jobs):
        lines.append("  nothing left to train: every run has ended (the sweep only reports them)")
        return "\n".join(lines)
    known = [j for j in jobs if j.setup in pace]
    if known:
        seconds = sum(pace[j.setup].seconds * j.left() for j in known)
        share = "" if len(known) == len(jobs) else f" for {len(known)} of {len(jobs)} jobs (the rest have no record)"
        wall = seconds / parallel
        when = f"{wall / 3600:.1f} h" if wall >= 7200 else f"{wall / 60:.0f} min"
        on = ", ".join(sorted(set().union(*(pace[j.setup].devices for j in known))))
        lines.append(f"  expected about {when}{share} at the pace of finished runs of the "
                     f"same setups on {on} (results root and results/; their machine and its load, not this "
                     f"machine's pace); progress lines with an ETA follow every epoch")
    else:
        kind = jobs[0].setup[-1] if jobs else "cpu"
        lines.append(f"  no finished run of these setups on a {kind} to estimate from; progress lines with an ETA "
                     f"follow every epoch")
    return "\n".join(lines)


def sweep_plan(overrides: Sequence[str], points: Sequence[Sequence[str]],
               configs: Sequence[DictConfig]) -> tuple[list[Job], int, dict[tuple[Any, ...], Pace]]:
    """The jobs `normexp-train -m OVERRIDES` runs (its grid `points`, composed as `configs`), how
    many at a time, and the recorded paces."""
    from normexp.compose import compose

    recorded = Recorded()
    jobs = [job_of(point, cfg, recorded) for point, cfg in zip(points, configs)]
    launcher = compose(points[0], hydra=True).hydra.launcher
    parallel = jobs_at_once(launcher, len(jobs), device_kind(configs[0].runtime.device) == "gpu")
    root = Path(configs[0].paths.results_root).expanduser()
    return jobs, parallel, recorded_pace([root, COMMITTED])


def jobs_at_once(launcher: DictConfig, jobs: int, gpu: bool) -> int:
    """How many of a sweep's `jobs` its launcher (hydra.launcher) trains at once: its `n_jobs`
    (joblib's -1 every core, -2 all but one, ...; hydra/launcher=threads: launcher.concurrent_jobs)
    or `array_parallelism` (SLURM), else one (Hydra's basic launcher runs them one after another)."""
    if launcher.get("_target_") == THREADS_LAUNCHER:
        return min(jobs, concurrent_jobs(launcher.get("n_jobs"), jobs, gpu))
    n_jobs = launcher.get("n_jobs") or launcher.get("array_parallelism") or 1
    if n_jobs < 0:
        n_jobs = len(os.sched_getaffinity(0)) + 1 + n_jobs
    return max(1, min(jobs, n_jobs))
