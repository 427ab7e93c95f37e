"""One training harness: what every training loop builds around a pack of seeds, in one place.
The conductor's runs (normexp.train.conductor, which keeps a run's lifecycle), the benches
(normexp.train.timing, scripts/), the probes and the tests train through it, so a bench times the
step that training runs.

`run_config` and `seeded_model` give one seed's config and model; `pack` packs seeds' models as
one (under the global RNG's lock); `trains_packed` says whether a job's seeds do (`pack_limit`);
`prepare_model` sets the pack's model up (virtual devices, each norm's precision, device and
layout); `train_batches` gives its augmented epochs; `build` its optimizer, schedule, forward
(compiled or not) and step (eager or with its state on the device), resumed from checkpoints if
given; `Harness.epoch` trains one epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence, cast

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from normexp.config import plain, step_batch
from normexp.data import TrainBatches
from normexp.nn.devices import split_batch_statistics
from normexp.nn.models import build_model
from normexp.nn.norms import canonical_spec
from normexp.nn.packing import Pack, check_packable
from normexp.nn.precision import set_norm_precision
from normexp.threads import GLOBAL_RNG
from normexp.train import runtime
from normexp.train.engine import EpochResult, TrainStep, train_epoch
from normexp.train.optim import build_optimizer, build_scheduler
from normexp.train.progress import StepProgress
from normexp.train.runtime import Environment
from normexp.train.step import build_step


def run_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the single run with this seed (what its identity and record hold), its norm
    settings in canonical types (norms.canonical_spec)."""
    run = copy.deepcopy(cfg)
    run.seed = seed
    run.norm = canonical_spec(plain(cfg.norm))
    return run


def seeded_model(cfg: DictConfig) -> nn.Module:
    """The model of a run's config, initialized from its seed (under the global RNG's lock)."""
    with GLOBAL_RNG:
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, plain(cfg.norm))


def pack(models: Sequence[nn.Module]) -> Pack:
    """Seeds' models packed as one (packing builds layers from torch's global RNG: under its lock)."""
    with GLOBAL_RNG:
        return Pack(models)


def check_packs(model: nn.Module) -> None:
    """Raise PackingError (a ConfigError) if `model` holds a layer packing does not know."""
    with GLOBAL_RNG:
        check_packable(model)


def pack_limit(cfg: DictConfig, device: torch.device) -> int:
    """The most images per step at which seeds train packed: `runtime.pack_max_batch`, or where
    packing wins (results/bench): at every batch size on a GPU, up to 4 images per step on CPU."""
    if cfg.runtime.pack_max_batch is not None:
        return cfg.runtime.pack_max_batch
    return step_batch(cfg) if device.type == "cuda" else 4


def trains_packed(cfg: DictConfig, device: torch.device, seeds: int) -> bool:
    """Whether `seeds` seeds of `cfg` train packed as one model: several, with a step small enough."""
    return seeds > 1 and step_batch(cfg) <= pack_limit(cfg, device)


def prepare_model(model: nn.Module, cfg: DictConfig, env: Environment) -> None:
    """In place: `data.devices` virtual devices for its batch-dependent layers, each norm in its
    kernel's precision under `trainer.precision`, moved to the job's device in its layout."""
    split_batch_statistics(model, cfg.data.devices)
    if cfg.trainer.precision is not None:
        set_norm_precision(model)
    model.to(env.device, memory_format=env.layout)  # type: ignore[call-overload]  # torch's overloads lack it


def train_batches(cfg: DictConfig, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, seeds: Sequence[int],
                  env: Environment) -> TrainBatches:
    """The training epochs of a pack of `seeds` (images and labels already on the device): the
    run's step batch, augmented as `data` says, in the job's layout."""
    return TrainBatches(images, labels, step_batch(cfg), mean, std, seeds=seeds, padding=cfg.data.crop_padding,
                        flip=cfg.data.flip, crop_fill=cfg.data.crop_fill, memory_format=env.layout)


@dataclass
class Harness:
    """A pack's training pieces: its epochs, optimizer, schedule and step."""

    pack: Pack
    train: TrainBatches
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: TrainStep
    epochs: int

    def epoch(self, epoch: int, log_every: int, progress: Optional[StepProgress] = None,
              frozen: bool = False) -> EpochResult:
        """Train epoch `epoch` (1-based) of `epochs`."""
        return train_epoch(self.pack, self.step, self.scheduler, self.train, epoch, log_every, self.epochs,
                           progress, frozen)


def build(cfg: DictConfig, pack: Pack, train: TrainBatches, env: Environment, epochs: int,
          compile_mode: Optional[str] = "config",
          resume: Optional[tuple[Sequence[dict[str, Any]], dict[str, Any]]] = None) -> Harness:
    """The harness of a prepared `pack` over `epochs` epochs, its step the kind `env` says.
    `compile_mode`: "config" (runtime.compile decides), None (eager) or a torch.compile mode
    ("default", "reduce-overhead"); `resume`: the members' optimizer states and the scheduler's
    state from their checkpoints."""
    optimizer = build_optimizer(pack.model, cfg.optim, step_batch(cfg))
    scheduler = build_scheduler(optimizer, cfg.optim, train.steps, epochs)
    if resume is not None:
        pack.load_optimizer(optimizer, resume[0])
        scheduler.load_state_dict(resume[1])
    if compile_mode == "config":
        forward = runtime.maybe_compiled(cfg.runtime.compile, pack.model, env)
    else:
        forward = pack.model if compile_mode is None else cast(nn.Module, torch.compile(
            pack.model, mode=None if compile_mode == "default" else compile_mode))
    step = build_step(pack, forward, optimizer, train, env, cfg.norm.name, cfg.trainer.precision)
    return Harness(pack, train, optimizer, scheduler, step, epochs)
