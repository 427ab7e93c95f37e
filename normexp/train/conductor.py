"""A job's lifecycle: claim its runs, skip finished ones, resume, train, checkpoint, summarize.

A job is one configuration with one seed, or several seeds trained as one packed model. Each run
keeps its own folder and record (normexp.record) whether it was trained alone or packed.
"""

from __future__ import annotations

import logging
import traceback
from contextlib import ExitStack
from typing import Any, Optional, cast

import torch
from omegaconf import DictConfig
from torch import nn

from normexp import record
from normexp.config import ConfigError, seeds, step_batch, unwritable, validate
from normexp.data import CifarArrays, EvalBatches, TrainBatches, load_cifar10
from normexp.data.loader import maybe_subset
from normexp.files import atomic
from normexp.nn.devices import check_splittable
from normexp.nn.packing import Pack
from normexp.train import epochs, harness, run_state, runtime, trackers
from normexp.train.bn_evaluation import EvaluationPlan
from normexp.train.epochs import EpochListener
from normexp.train.optim import scaled_lr
from normexp.train.progress import StepProgress
from normexp.train.run_log import run_logger, shared_lines
from normexp.train.run_state import RunState
from normexp.train.runtime import Environment
from normexp.train.step import check_capturable

log = logging.getLogger("normexp")


def load_data(cfg: DictConfig) -> CifarArrays:
    return load_cifar10(cfg.data.source, cfg.paths, cfg.runtime.download)


def train_job(cfg: DictConfig, auto_threads: Optional[int] = None, on_epoch: Optional[EpochListener] = None,
              alone: bool = True) -> list[dict[str, Any]]:
    """Train the configured run, or the runs of `seed=[...]` packed as one model; return summaries.

    Each run resumes if it was interrupted and is skipped if it has finished; runs that another
    process holds are left out of the result. All settings are checked before any data is decoded
    or any step is trained. Torch threads: `runtime.threads`, else those a resumed run started with,
    else `auto_threads` (the launcher's share of the cores). `on_epoch` hears of every run's
    epochs (a sweep's progress line); `alone`: no other job trains at once on this console, so
    the job may draw its progress as a bar (`runtime.progress`).
    """
    validate(cfg)
    trackers.require(cfg)
    torch.set_num_threads(cfg.runtime.threads or auto_threads or torch.get_num_threads())
    configs = [harness.run_config(cfg, seed) for seed in seeds(cfg)]
    models = [harness.seeded_model(config) for config in configs]
    env = runtime.job_environment(cfg, models[0])
    _check_before_data(cfg, models, env)
    data = load_data(cfg)
    hook = on_epoch or (lambda *_: None)
    with ExitStack() as stack:
        runs, summaries = _open_runs(stack, configs, models, data.digest, hook)
        if runs:
            with ExitStack() as setup:  # the job's set-up lines (threads, environment) go to every run's log
                for run in runs:
                    setup.enter_context(shared_lines(run.directory))
                env = _check_resumable(cfg, runs, env)
                log.info("training on %s, %d torch thread(s), %s step, %s layout", runtime.device_name(env.device),
                         env.threads, "captured" if env.captured else "eager", runtime.layout(env.layout))
            try:
                _train(cfg, runs, data, env, hook, alone)
            except Exception as error:
                for run in runs:
                    if run.summary is None:
                        record.write_error(run.directory, type(error).__name__, str(error), traceback.format_exc())
                raise
            summaries += [cast("dict[str, Any]", run.summary) for run in runs]  # each written by _train
    return summaries


def _check_before_data(cfg: DictConfig, models: list[nn.Module], env: Environment) -> None:
    """What the job's settings, models and environment allow, checked before any data is decoded
    (ConfigError)."""
    runtime.warn_slow_precision(cfg.trainer.precision, env.device)
    check_capturable(cfg.norm, env.graph)
    if harness.trains_packed(cfg, env.device, len(models)):
        harness.check_packs(models[0])
    check_splittable(models[0], cfg.data.devices, cfg.evaluation.batch_statistics)
    problem = unwritable(cfg.paths.results_root)
    if problem:
        raise ConfigError(problem)


def _open_runs(stack: ExitStack, configs: list[DictConfig], models: list[nn.Module], digest: str,
               on_epoch: EpochListener) -> tuple[list[RunState], list[dict[str, Any]]]:
    """The runs this job trains, each claimed on `stack` with its log and tracker open on its own
    `open_files` (closed when it finishes, else with `stack`), and the summaries of those already
    done; a run another process holds is left out."""
    runs: list[RunState] = []
    summaries: list[dict[str, Any]] = []
    for config, model in zip(configs, models):
        directory = record.run_dir(config, digest)
        if not stack.enter_context(record.claim(directory)):
            log.info("%s is being trained by another process; skipping it", directory)
            continue
        record.remove_stale_temps(directory)
        summary = record.read_summary(directory)
        if summary is not None:
            log.info("%s already done (%s); skipping it", directory.name, summary["status"])
            summaries.append(summary)
            on_epoch(directory.name, summary["epochs_done"], False)
            continue
        open_files = stack.enter_context(ExitStack())  # closed early when the run finishes (_train_pack)
        run_log = open_files.enter_context(run_logger(directory))
        tracker = open_files.enter_context(trackers.open_run(config, directory, run_log))
        runs.append(RunState(config, directory, run_log, model, tracker, open_files=open_files))
    return runs, summaries


def _check_resumable(cfg: DictConfig, runs: list[RunState], env: Environment) -> Environment:
    """Runs with a checkpoint resume with the threads, environment and settings they started with
    (ConfigError for a changed setting or environment); the job's environment, with their threads."""
    resumed = [run.directory for run in runs if (run.directory / record.CHECKPOINT).is_file()]
    if cfg.runtime.threads is None:
        env = runtime.keep_recorded_threads(resumed, env)
    runtime.refuse_environment_change(resumed, env, cfg.runtime.allow_env_change)
    for directory in resumed:
        if changes := record.setting_changes(directory, cfg):
            raise ConfigError(f"{directory.name} started with other settings ({', '.join(changes)}): "
                              "resuming would mix two kinds of records under one name; resume it as it started")
    return env


def _packs(cfg: DictConfig, runs: list[RunState], device: torch.device) -> list[list[RunState]]:
    """Runs train packed if a step is small enough for packing to pay, grouped by the epoch
    they resume from, the most advanced first (a half-trained run resumes before fresh seeds start)."""
    by_start: dict[int, list[RunState]] = {}
    for run in runs:
        by_start.setdefault(len(run.metrics), []).append(run)
    groups = [group for _, group in sorted(by_start.items(), reverse=True)]
    if not harness.trains_packed(cfg, device, len(runs)):
        groups = [[run] for group in groups for run in group]
    return groups


def _train(cfg: DictConfig, runs: list[RunState], data: CifarArrays, env: Environment, on_epoch: EpochListener,
           alone: bool) -> None:
    for run in runs:
        run_state.start(run, data.digest, env.device)
        on_epoch(run.directory.name, len(run.metrics), False)
    train_x, train_y = maybe_subset(data.train_images, data.train_labels, cfg.data.train_subset, cfg.model.num_classes)
    test_x, test_y = maybe_subset(data.test_images, data.test_labels, cfg.data.test_subset, cfg.model.num_classes)
    train_x, train_y = train_x.to(env.device), train_y.to(env.device)
    test = EvalBatches(test_x.to(env.device), test_y.to(env.device), cfg.runtime.eval_batch_size, data.mean,
                       data.std, memory_format=env.layout)
    for group in _packs(cfg, runs, env.device):
        pack = harness.pack([run.model for run in group])
        harness.prepare_model(pack.model, cfg, env)
        for run in group:
            run.model.to(env.device, memory_format=env.layout)  # type: ignore[call-overload]  # torch's overloads lack it
        member_seeds = [run.cfg.seed for run in group]
        train = harness.train_batches(cfg, train_x, train_y, data.mean, data.std, member_seeds, env)
        progress = StepProgress(label=" ".join(run.directory.name for run in group),
                                bar=cfg.runtime.progress and alone)
        for run in group:  # the job's shared lines go to the logs of the runs training now
            run_state.record_start(run, env)
            run.open_files.enter_context(shared_lines(run.directory))
        with progress.logging_above_bars():
            _train_pack(cfg, group, pack, train, EvaluationPlan.of(cfg, test, train, member_seeds), env, data.source,
                        on_epoch, progress)


def _train_pack(cfg: DictConfig, group: list[RunState], pack: Pack, train: TrainBatches, plan: EvaluationPlan,
                env: Environment, source: str, on_epoch: EpochListener, progress: StepProgress) -> None:
    """Train a pack of runs from where they resume to their end, then write each run's summary."""
    resume = None
    if group[0].checkpoint is not None:
        resume = ([cast("dict[str, Any]", run.checkpoint)["optimizer"] for run in group],
                  group[0].checkpoint["scheduler"])
    else:
        run_state.log_start(cfg, group, pack, train, plan.test, env.device)
    trainer = harness.build(cfg, pack, train, env, cfg.trainer.epochs, resume=resume)
    epochs.train_epochs(group, trainer, plan, epochs.hooks(cfg, train, group[0].log), cfg.trainer.log_every,
                        on_epoch, progress)
    for run in group:
        run.summary = atomic.finite(record.summary(
            run.directory.name, run.metrics, run.diverged, run.compute_seconds, pack_size=pack.size,
            lr=scaled_lr(cfg.optim, step_batch(cfg)), data_source=source,
            **runtime.provenance(env, record.last_start(run.directory))))
        record.write_summary(run.directory, run.summary)
        run.tracker.finish(run.summary)
        run.open_files.close()  # a finished run's log takes no lines of the job's later runs
