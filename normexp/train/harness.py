"""One training harness: what every training loop builds around a pack of seeds, in one place.
The conductor's runs (normexp.train.conductor, which keeps a run's lifecycle) and the benches
(normexp.train.timing) train through it, so a bench times the step that training runs.

`prepare_model` sets the pack's model up (virtual devices, each norm's precision, device and
layout); `train_batches` gives its augmented epochs; `build` its optimizer, schedule, forward
(compiled or not) and step (eager or with its state on the device), resumed from checkpoints if
given; `Harness.epoch` trains one epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, cast

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from normexp.config import step_batch
from normexp.data import TrainBatches
from normexp.nn.devices import split_batch_statistics
from normexp.nn.packing import Pack
from normexp.nn.precision import set_norm_precision
from normexp.train import runtime
from normexp.train.engine import EpochResult, TrainStep, train_epoch
from normexp.train.optim import build_optimizer, build_scheduler
from normexp.train.progress import StepProgress
from normexp.train.step import build_step, captures


def prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device) -> torch.memory_format:
    """In place: `data.devices` virtual devices for its batch-dependent layers, each norm in its
    kernel's precision under `trainer.precision`, moved to `device` in the memory layout
    `runtime.channels_last` allows (runtime.memory_format), which is returned."""
    split_batch_statistics(model, cfg.data.devices)
    if cfg.trainer.precision is not None:
        set_norm_precision(model)
    fmt = runtime.memory_format(cfg.runtime.channels_last, model, device)
    model.to(device, memory_format=fmt)  # type: ignore[call-overload]  # torch's overloads lack it
    return fmt


def train_batches(cfg: DictConfig, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, seeds: Sequence[int],
                  fmt: torch.memory_format) -> TrainBatches:
    """The training epochs of a pack of `seeds` (images and labels already on the device): the
    run's step batch, augmented as `data` says, in layout `fmt`."""
    return TrainBatches(images, labels, step_batch(cfg), mean, std, seeds=seeds, padding=cfg.data.crop_padding,
                        flip=cfg.data.flip, crop_fill=cfg.data.crop_fill, memory_format=fmt)


@dataclass
class Harness:
    """A pack's training pieces: its epochs, optimizer, schedule and step."""

    pack: Pack
    train: TrainBatches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep
    captured: bool  # whether the step is captured (a CUDA graph), as its provenance records
    epochs: int

    def epoch(self, epoch: int, log_every: int, progress: Optional[StepProgress] = None,
              frozen: bool = False) -> EpochResult:
        """Train epoch `epoch` (1-based) of `epochs`."""
        return train_epoch(self.pack, self.step, self.scheduler, self.train, epoch, log_every, self.epochs,
                           progress, frozen)


def build(cfg: DictConfig, pack: Pack, train: TrainBatches, device: torch.device, epochs: int,
          compile_mode: Optional[str] = "config", capture: Optional[bool] = None,
          resume: Optional[tuple[Sequence[dict[str, Any]], dict[str, Any]]] = None) -> Harness:
    """The harness of a prepared `pack` over `epochs` epochs. `compile_mode`: "config"
    (runtime.compile decides), None (eager) or a torch.compile mode ("default", "reduce-overhead");
    `capture`: the step's kind (None: runtime.capture decides); `resume`: the members' optimizer
    states and the scheduler's state from their checkpoints."""
    optimizer = build_optimizer(pack.model, cfg.optim, step_batch(cfg))
    scheduler = build_scheduler(optimizer, cfg.optim, train.steps, epochs)
    if resume is not None:
        pack.load_optimizer(optimizer, resume[0])
        scheduler.load_state_dict(resume[1])
    capture = cfg.runtime.capture if capture is None else capture
    captured = captures(capture, device)
    if compile_mode == "config":
        forward = runtime.maybe_compiled(cfg.runtime.compile, pack.model, device, captured)
    else:
        forward = pack.model if compile_mode is None else cast(nn.Module, torch.compile(
            pack.model, mode=None if compile_mode == "default" else compile_mode))
    step = build_step(pack, forward, optimizer, train, device, capture, cfg.norm.name, cfg.trainer.precision)
    return Harness(pack, train, optimizer, scheduler, step, captured, epochs)
