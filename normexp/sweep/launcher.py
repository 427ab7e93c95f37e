"""One process runs a whole sweep (`hydra/launcher=threads`): the jobs train in threads of this process,
each on its own CUDA stream, so that kernels of the small-batch chains run beside the large-batch
jobs' (kernels of different processes never overlap on one GPU without MPS). On CPU it runs the
jobs one after another, as Hydra's basic launcher does.

Hydra's per-job state (HydraConfig) is process-wide, so a job holds `HYDRA_GATE` (normexp.threads,
with the rest of what the job threads share) while Hydra sets it up and tears it down, and lets go
of it while it trains (`hydra_released`, around `train_job` in the app). Hydra's logging is
process-wide too: with several jobs at once the console takes Hydra's job logging without its
per-job file (each line names its logger, so a run's lines name the run), and each run's
`train.log` holds its own lines and, while it trains, its job thread's (normexp.train.run_log).

Each run keeps its folder, lock, checkpoint and record as under any launcher; a failing job does
not stop the others (the app notes it for the sweep's report); Ctrl-C or a kill ends every job,
each losing at most the epoch it had in flight. Every job holds its data and epoch buffer on the
GPU, one training set of fp32 images per packed seed, filled one seed at a time (the sizes: the
docs/speed.md; scripts/probes/fill_memory.py); `n_jobs` bounds the total.
"""

from __future__ import annotations

import copy
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from normexp.threads import HYDRA_GATE, SHARED_PROCESS, holding

log = logging.getLogger("normexp")

# hydra/launcher=threads's class, in the package where Hydra finds launchers (hydra_plugins/normexp_launcher)
THREADS_LAUNCHER = "hydra_plugins.normexp_launcher.threads_launcher.ThreadsLauncher"


@contextmanager
def hydra_released() -> Iterator[None]:
    """Inside, other jobs of this process may set up and tear down (a job under `launch` lets go of
    HYDRA_GATE and gets its HydraConfig back after); elsewhere, nothing happens."""
    if not getattr(holding, "gate", False):
        yield
        return
    saved = HydraConfig.instance().cfg
    HYDRA_GATE.release()
    try:
        yield
    finally:
        HYDRA_GATE.acquire()
        HydraConfig.instance().cfg = saved


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _console_logging(config: DictConfig) -> DictConfig:
    """Hydra's job logging (hydra.job_logging) without its file handlers, which name one job's folder:
    the console of a sweep whose jobs run at once (a copy, inside the config, so its references resolve)."""
    job = copy.deepcopy(config).hydra.job_logging
    with open_dict(job):
        handlers = job.get("handlers") or {}
        files = [name for name, handler in handlers.items() if handler is not None and "filename" in handler]
        for name in files:
            del handlers[name]
        for logger in [job.get("root"), *(job.get("loggers") or {}).values()]:
            if logger is not None and logger.get("handlers"):
                logger.handlers = [name for name in logger.handlers if name not in files]
    return job


# torch.cuda.Stream() hands out a device's 32 pooled streams in rotation and a job takes two (its own
# and its step's side stream): above 16 jobs at once one job's capture stream would be another's
# replay stream
MAX_CUDA_JOBS = 16


def concurrent_jobs(n_jobs: Optional[int], jobs: int, cuda: bool) -> int:
    """Jobs at a time: `n_jobs` (null: every job on a GPU, 1 on CPU), at most MAX_CUDA_JOBS on a GPU."""
    if not cuda:
        return n_jobs or 1
    return min(n_jobs or jobs, MAX_CUDA_JOBS)


def launch(config: DictConfig, context: HydraContext, task: TaskFunction, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int, n_jobs: Optional[int]) -> list[JobReturn]:
    """Run the sweep's jobs in this process, `n_jobs` at a time (concurrent_jobs)."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    cuda = _cuda()
    workers = concurrent_jobs(n_jobs, len(job_overrides), cuda)
    if cuda and n_jobs and n_jobs > MAX_CUDA_JOBS:
        log.warning("hydra.launcher.n_jobs=%d: at most %d jobs run at once on a GPU (CUDA's stream pool)",
                    n_jobs, MAX_CUDA_JOBS)
    log.info("Launching %d jobs in this process, %d at a time%s", len(job_overrides), workers,
             ", each on its own CUDA stream" if cuda else "")
    configs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
        sweep_config = context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
        configs.append(sweep_config)
    if workers > 1:
        configure_log(_console_logging(config), config.hydra.verbose)

    def one(sweep_config: DictConfig) -> JobReturn:
        with HYDRA_GATE, ExitStack() as stack:
            holding.gate = True
            if cuda:
                import torch

                stack.enter_context(torch.cuda.stream(torch.cuda.Stream()))
            try:
                return run_job(hydra_context=context, task_function=task, config=sweep_config,
                               job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                               configure_logging=workers == 1)
            finally:
                holding.gate = False

    if workers == 1:
        results = [one(c) for c in configs]
    else:
        if cuda:
            SHARED_PROCESS.set()  # a failed capture then stops the sweep (normexp.train.step.capture_failed)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        try:
            results = list(pool.map(one, configs))
        except KeyboardInterrupt:
            log.warning("interrupted; finished epochs are kept: rerun the same command to resume")
            os._exit(130)  # the jobs' threads would each train on to the end of their epoch
        pool.shutdown()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return results
