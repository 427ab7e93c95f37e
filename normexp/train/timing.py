"""normexp's training loop timed: `normexp_loop` builds a preset config's seeds packed as one model
through the harness (normexp.train.harness) and returns a function that trains one epoch;
`normexp_rate` times the second of two epochs. Shared by the benches in scripts/."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from normexp.data import CifarArrays
from normexp.train import harness, runtime
from normexp.train.engine import EpochResult


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, its device work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def flops_per_image(model: nn.Module, batch: int = 16) -> float:
    """FLOPs of one training image through `model`, forward and backward (torch's FLOP counter)."""
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def normexp_loop(cfg: DictConfig, data: CifarArrays, index: torch.Tensor, pack_size: int,
                 compile_mode: str | None = "config", capture: bool | None = None,
                 epochs: int = 2) -> Callable[[int], EpochResult]:
    """normexp's loop (`engine.train_epoch`) on `pack_size` seeds packed as one model, built on the
    current CUDA stream on the device `runtime.device` names: a function that trains epoch e (1, 2,
    ... up to `epochs`, the schedule's length) and returns its result. `compile_mode`: "config"
    (runtime.compile decides), None (eager), or a torch.compile mode ("default", "reduce-overhead");
    `capture`: the step (normexp.train.step; None: as `runtime.capture` decides)."""
    pack = harness.pack([harness.seeded_model(harness.run_config(cfg, seed)) for seed in range(pack_size)])
    env = runtime.job_environment(cfg, pack.model, capture)
    harness.prepare_model(pack.model, cfg, env)
    train = harness.train_batches(cfg, data.train_images[index].to(env.device), data.train_labels[index].to(env.device),
                                  data.mean, data.std, range(pack_size), env)
    trainer = harness.build(cfg, pack, train, env, epochs, compile_mode)
    return lambda epoch: trainer.epoch(epoch, cfg.trainer.log_every)


@dataclass(frozen=True)
class Rate:
    """`normexp_rate`'s measurement: training images/s of the timed epoch, the untimed first epoch's
    seconds (warm-up, compilation, capture) and the timed epoch's augmentation fill seconds."""

    images_per_s: float
    first_seconds: float
    fill_seconds: float


def normexp_rate(cfg: DictConfig, data: CifarArrays, index: torch.Tensor, pack_size: int,
                 compile_mode: str | None = "config", capture: bool | None = None, loop_only: bool = False) -> Rate:
    """The rate of `normexp_loop`'s second epoch (the first warms up, compiles and captures): the
    whole epoch with its augmentation fill, or with `loop_only` the step loop alone (CUDA events on
    a GPU)."""
    loop = normexp_loop(cfg, data, index, pack_size, compile_mode, capture)
    start = time.perf_counter()
    loop(1)
    first = time.perf_counter() - start
    timed = loop(2).records[0]
    images = timed["images_per_s"] * timed["train_seconds"]  # a seed's images this epoch (no capture in it)
    rate = pack_size * images / (timed["loop_seconds"] if loop_only else timed["train_seconds"])
    torch._dynamo.reset()  # a next cell's model must not count against this one's compile cache
    return Rate(rate, first, timed["fill_seconds"])
