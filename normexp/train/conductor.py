"""A job's lifecycle: claim its runs, skip finished ones, resume, train, checkpoint, summarize.

A job is one configuration with one seed, or several seeds trained as one packed model. Each run
keeps its own folder and record (normexp.record) whether it was trained alone or packed.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from contextlib import ExitStack
from typing import Any, Callable, Optional, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normexp import record
from normexp.config import ConfigError, first_frozen_epoch, seeds, step_batch, unwritable, validate
from normexp.data import CifarArrays, EvalBatches, TrainBatches, load_cifar10
from normexp.data.loader import maybe_subset
from normexp.files import atomic
from normexp.nn.devices import check_splittable
from normexp.nn.models import build_model
from normexp.nn.norms import canonical_spec
from normexp.nn.packing import Pack, check_packable
from normexp.threads import GLOBAL_RNG
from normexp.train import harness, run_state, runtime, trackers
from normexp.train.bn_evaluation import StatisticsDraw, legacy_precise_batches
from normexp.train.engine import ExtraEvaluations, evaluate_members
from normexp.train.optim import scaled_lr
from normexp.train.progress import StepProgress
from normexp.train.run_state import RunState
from normexp.train.step import captures, check_capturable

log = logging.getLogger("normexp")


def run_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the single run with this seed (what its identity and record hold), its norm
    settings in canonical types (norms.canonical_spec)."""
    run = copy.deepcopy(cfg)
    run.seed = seed
    run.norm = canonical_spec(cast("dict[str, Any]", OmegaConf.to_container(cfg.norm, resolve=True)))
    return run


def seeded_model(cfg: DictConfig) -> nn.Module:
    with GLOBAL_RNG:
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, cast("dict[str, Any]", OmegaConf.to_container(cfg.norm, resolve=True)))


def load_data(cfg: DictConfig) -> CifarArrays:
    return load_cifar10(cfg.data.source, cfg.paths, cfg.runtime.download)


EpochHook = Callable[[str, int, bool], None]  # (run, epochs done, whether one was trained just now)


def train_job(cfg: DictConfig, auto_threads: Optional[int] = None, on_epoch: Optional[EpochHook] = None,
              bar_position: int = 0) -> list[dict[str, Any]]:
    """Train the configured run, or the runs of `seed=[...]` packed as one model; return summaries.

    Each run resumes if it was interrupted and is skipped if it has finished; runs that another
    process holds are left out of the result. All settings are checked before any data is decoded
    or any step is trained. Torch threads: `runtime.threads`, else those a resumed run started with,
    else `auto_threads` (the launcher's share of the cores). `on_epoch` hears of every run's
    epochs (a sweep's progress line); `bar_position` is the terminal line of this job's progress bar.
    """
    validate(cfg)
    trackers.require(cfg)
    torch.set_num_threads(cfg.runtime.threads or auto_threads or torch.get_num_threads())
    configs = [run_config(cfg, seed) for seed in seeds(cfg)]
    models = [seeded_model(config) for config in configs]
    device = runtime.pick_device(cfg.runtime.device)
    _check_before_data(cfg, models, device)
    data = load_data(cfg)
    hook = on_epoch or (lambda *_: None)
    with ExitStack() as stack:
        runs, summaries = _open_runs(stack, configs, models, data.digest, hook)
        if runs:
            with ExitStack() as setup:  # the job's set-up lines (threads, layout) go to every run's log
                for run in runs:
                    setup.enter_context(record.shared_lines(run.directory))
                fmt = runtime.memory_format(cfg.runtime.channels_last, models[0], device)
                _check_resumable(cfg, runs, device, fmt)
            try:
                _train(cfg, runs, data, device, hook, bar_position, fmt)
            except Exception as error:
                for run in runs:
                    if run.summary is None:
                        record.write_error(run.directory, type(error).__name__, str(error), traceback.format_exc())
                raise
            summaries += [cast("dict[str, Any]", r.summary) for r in runs]  # each written by _train
    return summaries


def _check_before_data(cfg: DictConfig, models: list[nn.Module], device: torch.device) -> None:
    """What the job's settings and models allow, checked before any data is decoded (ConfigError)."""
    runtime.warn_slow_precision(cfg.trainer.precision, device)
    check_capturable(cfg.norm, captures(cfg.runtime.capture, device) and device.type == "cuda")
    if len(models) > 1 and step_batch(cfg) <= pack_limit(cfg, device):
        with GLOBAL_RNG:
            check_packable(models[0])
    check_splittable(models[0], cfg.data.devices, cfg.evaluation.batch_statistics)
    problem = unwritable(cfg.paths.results_root)
    if problem:
        raise ConfigError(problem)


def _open_runs(stack: ExitStack, configs: list[DictConfig], models: list[nn.Module], digest: str,
               on_epoch: EpochHook) -> tuple[list[RunState], list[dict[str, Any]]]:
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
        summary = record.read_json(directory / record.SUMMARY)
        if summary is not None:
            log.info("%s already done (%s); skipping it", directory.name, summary["status"])
            summaries.append(summary)
            on_epoch(directory.name, summary["epochs_done"], False)
            continue
        open_files = stack.enter_context(ExitStack())  # closed early when the run finishes (_train_pack)
        run_log = open_files.enter_context(record.run_logger(directory))
        tracker = open_files.enter_context(trackers.open_run(config, directory, run_log))
        runs.append(RunState(config, directory, run_log, model, tracker, open_files=open_files))
    return runs, summaries


def _check_resumable(cfg: DictConfig, runs: list[RunState], device: torch.device, fmt: torch.memory_format) -> None:
    """Runs with a checkpoint resume with the threads, environment and settings they started with
    (ConfigError for a changed setting or environment)."""
    resumed = [r.directory for r in runs if (r.directory / record.CHECKPOINT).is_file()]
    if cfg.runtime.threads is None:
        runtime.keep_recorded_threads(resumed)
    runtime.refuse_environment_change(resumed, device, captures(cfg.runtime.capture, device),
                                      cfg.runtime.allow_env_change, fmt)
    for directory in resumed:
        if changes := record.setting_changes(directory, cfg):
            raise ConfigError(f"{directory.name} started with other settings ({', '.join(changes)}): "
                              "resuming would mix two kinds of records under one name; resume it as it started")


def pack_limit(cfg: DictConfig, device: torch.device) -> int:
    """The most images per step at which seeds train packed: `runtime.pack_max_batch`, or where
    packing wins (results/bench): at every batch size on a GPU, up to 4 images per step on CPU."""
    if cfg.runtime.pack_max_batch is not None:
        return cfg.runtime.pack_max_batch
    return step_batch(cfg) if device.type == "cuda" else 4


def _packs(cfg: DictConfig, runs: list[RunState], device: torch.device) -> list[list[RunState]]:
    """Runs train packed if a step is small enough for packing to pay, grouped by the epoch
    they resume from, the most advanced first (a half-trained run resumes before fresh seeds start)."""
    by_start: dict[int, list[RunState]] = {}
    for run in runs:
        by_start.setdefault(len(run.metrics), []).append(run)
    groups = [group for _, group in sorted(by_start.items(), reverse=True)]
    if step_batch(cfg) > pack_limit(cfg, device):
        groups = [[run] for group in groups for run in group]
    return groups


def _train(cfg: DictConfig, runs: list[RunState], data: CifarArrays, device: torch.device, on_epoch: EpochHook,
           bar_position: int, fmt: torch.memory_format) -> None:
    for run in runs:
        run_state.start(run, data.digest, device)
        on_epoch(run.directory.name, len(run.metrics), False)
    groups = _packs(cfg, runs, device)
    train_x, train_y = maybe_subset(data.train_images, data.train_labels, cfg.data.train_subset, cfg.model.num_classes)
    test_x, test_y = maybe_subset(data.test_images, data.test_labels, cfg.data.test_subset, cfg.model.num_classes)
    train_x, train_y = train_x.to(device), train_y.to(device)
    test = EvalBatches(test_x.to(device), test_y.to(device), cfg.runtime.eval_batch_size, data.mean, data.std,
                       memory_format=fmt)
    for group in groups:
        with GLOBAL_RNG:
            pack = Pack([m.model for m in group])
        harness.prepare_model(pack.model, cfg, device)
        for run in group:
            run.model.to(device, memory_format=fmt)  # type: ignore[call-overload]  # torch's overloads lack it
        train = harness.train_batches(cfg, train_x, train_y, data.mean, data.std, [m.cfg.seed for m in group], fmt)
        progress = StepProgress(label=" ".join(m.directory.name for m in group), bar=cfg.runtime.progress,
                                position=bar_position)
        for run in group:  # the job's shared lines go to the logs of the runs training now
            run_state.record_start(run, device, fmt)
            run.open_files.enter_context(record.shared_lines(run.directory))
        with progress.logging_above_bars():
            _train_pack(cfg, group, pack, train, test, device, data.source, on_epoch, progress)


def _train_pack(cfg: DictConfig, group: list[RunState], pack: Pack, train: TrainBatches, test: EvalBatches,
                device: torch.device, source: str, on_epoch: EpochHook, progress: StepProgress) -> None:
    epochs = cfg.trainer.epochs
    resume = None
    if group[0].checkpoint is not None:
        resume = ([cast("dict[str, Any]", r.checkpoint)["optimizer"] for r in group], group[0].checkpoint["scheduler"])
    else:
        run_state.log_start(cfg, group, pack, train, test, device)
    trainer = harness.build(cfg, pack, train, device, epochs, resume=resume)
    legacy_precise = legacy_precise_batches(cfg.norm, train)
    extra = ExtraEvaluations(
        StatisticsDraw.of(train, cfg.evaluation.precise_images) if cfg.evaluation.precise_images else None,
        cfg.data.batch_size if cfg.evaluation.batch_statistics else None, [r.cfg.seed for r in group])
    frozen_from = first_frozen_epoch(cfg.norm.get("freeze_after"), epochs)
    for epoch in range(len(group[0].metrics) + 1, epochs + 1):
        epoch_start = time.perf_counter()
        if epoch == frozen_from:  # FrozenBN: the precise statistics of the weights so far, epoch-1's draw
            StatisticsDraw.of(train, cfg.norm.freeze_images).apply(pack.model, epochs + epoch - 1)
            group[0].log.info("epoch %d on: BN statistics frozen at their precise population values", epoch)
        frozen = frozen_from is not None and epoch >= frozen_from
        result = trainer.epoch(epoch, cfg.trainer.log_every, progress, frozen)
        eval_start = time.perf_counter()
        alive = [r.diverged is None and d is None for r, d in zip(group, result.diverged)]
        due = (epoch % cfg.trainer.eval_every == 0 or epoch == epochs) and any(alive)  # never NaN weights alone
        tested = (evaluate_members(pack, [r.model for r in group], test, epochs + epoch,  # draws past training
                                   (legacy_precise, cfg.norm.precise_bn_batches) if legacy_precise else None, extra,
                                   frozen)
                  if due else [run_state.UNTESTED] * pack.size)
        active = [(i, r) for i, r in enumerate(group) if r.diverged is None]
        run_state.record_epochs(active, result, tested, time.perf_counter() - eval_start, pack.size,
                       frozen if frozen_from else None, epochs)
        run_state.checkpoint(active, pack.member_states(trainer.optimizer), trainer.scheduler.state_dict(),
                    (time.perf_counter() - epoch_start) / pack.size)  # the job's wall time, split over its runs
        for _, run in active:
            on_epoch(run.directory.name, len(run.metrics), True)
        if all(r.diverged is not None for r in group):
            break
    for run in group:
        run.summary = atomic.finite(record.summary(
            run.directory.name, run.metrics, run.diverged, run.compute_seconds,
            pack_size=run.metrics[-1]["pack_size"], lr=scaled_lr(cfg.optim, step_batch(cfg)), data_source=source,
            **runtime.provenance(device, record.last_start(run.directory), trainer.captured)))
        record.write_summary(run.directory, run.summary)
        run.tracker.finish(run.summary)
        run.open_files.close()  # a finished run's log takes no lines of the job's later runs
