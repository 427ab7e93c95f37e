"""`normexp-train`: the Hydra app that trains one configuration (or a sweep with -m).

Torch is imported only once every other setting of every job has passed (to build each job's model
and check the norm settings it alone can judge), so --help, --cfg and most bad input answer quickly.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from normexp.compose import CONF_DIR
from normexp.config import ConfigError, register_configs
from normexp.sweep.launcher import hydra_released
from normexp.sweep.orphans import die_with_main, mark_main

log = logging.getLogger("normexp")

register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    from normexp.config import seeds
    from normexp.data.sources import DataError
    from normexp.record import DIVERGED, DamagedRecord
    from normexp.train.conductor import train_job  # torch: only when a job really runs
    from normexp.train.runtime import default_threads, registered_job

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:
        die_with_main()  # a worker process of hydra/launcher=joblib ends with the sweep's main process
    try:
        with registered_job(Path(cfg.paths.cache_dir).expanduser() / "jobs") as running:
            # under SLURM the CPU affinity is this job's allocation: other jobs on the node don't share it
            others = running if "SLURM_JOB_ID" not in os.environ else 1
            threads = default_threads(HydraConfig.get().launcher.get("n_jobs"), others)
            on_epoch, alone = _sweep_progress() if multirun else None, _alone_on_console(cfg, multirun)
            with hydra_released():  # hydra/launcher=threads: the sweep's other jobs in this process go on
                summaries = train_job(cfg, auto_threads=threads, on_epoch=on_epoch, alone=alone)
    except (ConfigError, DataError, DamagedRecord) as error:
        log.error("%s", error)
        if not multirun:
            sys.exit(2)
        _note_job_problem("rejected", str(error))
    except KeyboardInterrupt:
        log.warning("interrupted; finished epochs are kept: rerun the same command to resume")
        sys.exit(130)
    except Exception as error:
        if not multirun:
            raise
        log.exception("this job failed; the sweep goes on with the next one")
        _note_job_problem("failed", f"{type(error).__name__}: {error}")
    else:
        if held := len(seeds(cfg)) - len(summaries):
            _held_elsewhere(held, len(seeds(cfg)), multirun)
        diverged = [s for s in summaries if s["status"] == DIVERGED]
        if diverged and not multirun:  # a sweep counts its diverged runs at its end (normexp.cli.sweep_report)
            log.error("%d run(s) diverged (non-finite loss): kept in the record, listed by the analysis", len(diverged))
            sys.exit(1)


def _held_elsewhere(held: int, runs: int, multirun: bool) -> None:
    """Runs of this job that another process holds were not trained: say so, and do not end as done
    (a single run exits 1; a sweep's report counts the job)."""
    message = (f"{held} of {runs} run(s) of this job are being trained by another process (above), so this "
               f"command trained nothing for them: rerun it once that process has ended (or end it)")
    log.error("%s", message)
    if not multirun:
        sys.exit(1)
    _note_job_problem("held elsewhere", message)


def _sweep_progress():
    """The hook that logs this sweep's progress line as each epoch ends (normexp.sweep.progress)."""
    from normexp.sweep.progress import epoch_done

    sweep_dir = Path(HydraConfig.get().sweep.dir)
    return lambda run, done, trained: epoch_done(sweep_dir, run, done, trained)


def _alone_on_console(cfg: DictConfig, multirun: bool) -> bool:
    """Whether no other job trains at once on this console (so this one may draw a progress bar): a
    single run, or a job of a sweep whose launcher trains its jobs one after another."""
    if not multirun:
        return True
    from normexp.sweep.plan import device_kind, jobs_at_once
    from normexp.sweep.progress import sweep_of

    sweep = sweep_of(Path(HydraConfig.get().sweep.dir))
    gpu = device_kind(cfg.runtime.device) == "gpu"
    return sweep is not None and jobs_at_once(HydraConfig.get().launcher, sweep["jobs"], gpu) == 1


def _note_job_problem(kind: str, message: str) -> None:
    """Leave a note in the job's sweep folder for the end-of-sweep report (normexp.sweep.report)."""
    from normexp.sweep.report import note_job_problem

    note_job_problem(Path(HydraConfig.get().runtime.output_dir), kind, message,
                     list(HydraConfig.get().overrides.task))


def _check_command_line(argv: list[str]) -> tuple[Optional[str], list[str]]:
    """The first bad setting of this command line's job or sweep as one line (normexp.compose.check),
    or None, and the overrides to add for Hydra: a sweep that is fine prints its plan
    (normexp.sweep.plan) and hands its run-epochs to the progress lines. Help and information
    requests are left to Hydra."""
    from hydra._internal.utils import get_args_parser

    from normexp.cli.preflight import gpu_problem, launcher_problem, torchvision_problem
    from normexp.compose import check, checked_sweep_grid, compose, model_problem

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path or args.config_name \
            or args.config_dir or getattr(args, "experimental_rerun", None):
        return None, []
    points, problem = checked_sweep_grid(args.overrides) if args.multirun else ([args.overrides], None)
    if problem:
        return problem, []
    configs, problem = check(points)
    if problem is None and not args.cfg:
        problem = torchvision_problem() or (launcher_problem(compose(points[0], hydra=True).hydra)
                                            if args.multirun else None) or _cache_problem(configs) \
            or gpu_problem(points, configs)
    if problem is None and not args.cfg:  # settings that only the model can judge, for every job before any starts
        problem = model_problem(configs) or _data_problem(configs)
    if problem is None and args.multirun and not args.cfg:
        from normexp.sweep.plan import describe, run_epochs, sweep_plan

        jobs, parallel, pace = sweep_plan(args.overrides, points, configs)
        print(describe(jobs, parallel, pace), flush=True)
        return None, [f"hydra.callbacks.sweep_report.run_epochs={run_epochs(jobs)}"]
    return problem, []


def _cache_problem(configs: list[DictConfig]) -> Optional[str]:
    """Why a job's `paths.cache_dir` (the decoded data, the running jobs' register) cannot be written, or None."""
    from normexp.config import unwritable

    for folder in dict.fromkeys(str(c.paths.cache_dir) for c in configs):
        if problem := unwritable(folder, "paths.cache_dir"):
            return f"{problem} (set paths.cache_dir or NORMEXP_CACHE_DIR to a folder you can write)"
    return None


def _data_problem(configs: list[DictConfig]) -> Optional[str]:
    """Why a job's image folder (data.source=folder) is missing, once for the whole sweep, or None."""
    from normexp.data.sources import missing_folder

    folders = dict.fromkeys(str(c.paths.cifar10_folder) for c in configs if c.data.source == "folder")
    return next((problem for folder in folders if (problem := missing_folder(folder))), None)


def main() -> None:
    problem, planned = _check_command_line(sys.argv[1:])
    if problem:
        print(f"normexp-train: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv += planned  # Hydra reads its command line
    mark_main()
    try:
        app()
    except KeyboardInterrupt:  # a parallel launcher (joblib) re-raises its workers' interrupt here
        print("normexp-train: interrupted; finished epochs are kept: rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
