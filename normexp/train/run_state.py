"""One run's state while its job trains: started or resumed from its checkpoint, each epoch
recorded (metrics, losses, log, tracker), checkpointed, and marked when its loss diverges."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normexp import record
from normexp.data import EvalBatches, TrainBatches
from normexp.files import atomic
from normexp.nn.packing import Pack
from normexp.train import runtime, trackers
from normexp.train.engine import EpochResult


@dataclass
class RunState:
    """One run of a job, with what it has done so far."""

    cfg: DictConfig
    directory: Path
    log: logging.Logger
    model: nn.Module
    tracker: trackers.Tracker
    checkpoint: Optional[dict[str, Any]] = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    loss_log: list[dict[str, Any]] = field(default_factory=list)
    compute_seconds: float = 0.0
    diverged: Optional[dict[str, int]] = None
    summary: Optional[dict[str, Any]] = None
    open_files: ExitStack = field(default_factory=ExitStack)  # log, tracker, shared lines: closed when it finishes


def start(run: RunState, digest: str, device: torch.device) -> None:
    """Write the run's identity and config, and load its checkpoint if it has one."""
    path = run.directory / record.CHECKPOINT
    state = _load_checkpoint(path, device) if path.is_file() else None
    record.write_setup(run.directory, record.identity(run.cfg, digest), OmegaConf.to_yaml(run.cfg, resolve=True))
    if state is not None:
        run.model.load_state_dict(state["model"])
        run.checkpoint = state
        run.metrics, run.loss_log = state["metrics"], state["train_loss"]
        run.compute_seconds = state["compute_seconds"]
        run.log.info("resuming %s after epoch %d", run.directory.name, len(run.metrics))
    run.tracker.start(run.metrics, run.loss_log)


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """The run's checkpoint; DamagedRecord naming it if it cannot be read (truncated, emptied, garbled)."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        raise record.DamagedRecord(path, f"cannot be loaded: {type(error).__name__}",
                                   "delete it to train that run again from its start") from None


def record_start(run: RunState, env: runtime.Environment) -> None:
    """Append this start (time, code, environment, any change of it) to the run's `starts.jsonl`
    when the run begins to train (a seed queued behind another in its job starts later than the job)."""
    environment = runtime.environment(env)
    resumed = run.checkpoint is not None
    changed = record.environment_change(record.last_start(run.directory), environment) if resumed else []
    record.append_start(run.directory, {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "after_epoch": len(run.metrics),
                                        **environment, **runtime.code_version(),
                                        **({"environment_change": changed} if changed else {})})


UNTESTED = {"test_loss": None, "test_acc": None}  # an epoch without a test evaluation


def log_start(cfg: DictConfig, group: list[RunState], pack: Pack, train: TrainBatches, test: EvalBatches,
              device: torch.device) -> None:
    for run in group:
        run.log.info(
            "starting %s on %s%s: %d train / %d test images, %d steps per epoch of %d images (%d device(s) x %d)",
            run.directory.name, device, f", packed with {pack.size - 1} other seed(s)" if pack.size > 1 else "",
            len(train.labels), test.images, train.steps, train.batch_size, cfg.data.devices, cfg.data.batch_size)


def record_epochs(active: list[tuple[int, RunState]], result: EpochResult, tested: list[dict[str, Any]],
                  eval_seconds: float, pack_size: int, frozen: Optional[bool], epochs: int) -> None:
    """Each active run's epoch row and losses recorded; a run whose loss turned non-finite is marked
    diverged (its row has no test evaluation)."""
    for i, run in active:
        diverged = result.diverged[i]
        row = record.epoch_row(result.records[i], tested[i] if diverged is None else UNTESTED, eval_seconds,
                               pack_size, frozen)
        _record_epoch(run, row, result.losses[i], epochs)
        if diverged is not None:
            run.diverged = diverged
            run.log.warning("training diverged at epoch %d step %d (non-finite loss); stopping",
                            row["epoch"], diverged["step"])


def checkpoint(active: list[tuple[int, RunState]], states: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
               scheduler: dict[str, Any], share: float) -> None:
    """Each active run's compute time grows by its `share` of the epoch; each that has not diverged
    is checkpointed (model and optimizer from the pack's `states`, the shared schedule)."""
    for i, run in active:
        run.compute_seconds += share
        if run.diverged is None:
            checkpoint = record.checkpoint_state(*states[i], scheduler, run.metrics, run.loss_log,
                                                 run.compute_seconds)
            atomic.atomic_write(run.directory / record.CHECKPOINT, lambda tmp: torch.save(checkpoint, tmp))


def _fmt(value: Optional[float], pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def _record_epoch(run: RunState, row: dict[str, Any], losses: list[dict[str, Any]], epochs: int) -> None:
    run.metrics.append(row)
    run.loss_log.extend(losses)
    run.log.info(
        "epoch %d/%d | train loss %.4f acc %.2f%% | test loss %s acc %s | lr %.5f | %.1f s | %.0f img/s",
        row["epoch"], epochs, row["train_loss"], row["train_acc"], _fmt(row["test_loss"], "{:.4f}"),
        _fmt(row["test_acc"], "{:.2f}%"), row["lr"], row["seconds"], row["images_per_s"])
    record.write_progress(run.directory, run.metrics, run.loss_log)
    run.tracker.log_epoch(row, losses)
