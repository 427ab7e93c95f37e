"""normexp's training loop timed: `normexp_loop` builds a preset config's seeds packed as one model
with its step (normexp.train.step) and returns a function that trains one epoch and gives its
images/s; `normexp_rate` takes the second of two epochs. Shared by the benches in scripts/."""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from normexp.data import CifarArrays
from normexp.nn.packing import Pack
from normexp.train import harness
from normexp.train.conductor import run_config, seeded_model
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


def normexp_loop(cfg: DictConfig, data: CifarArrays, index: torch.Tensor, pack_size: int, device: torch.device,
                 compile_mode: str | None = "config", capture: bool | None = None,
                 epochs: int = 2) -> Callable[[int], EpochResult]:
    """normexp's loop (`engine.train_epoch`) on `pack_size` seeds packed as one model, built on the
    current CUDA stream: a function that trains epoch e (1, 2, ... up to `epochs`, the schedule's
    length) and returns its result. `compile_mode`: "config"
    (runtime.compile decides), None (eager), or a torch.compile mode ("default", "reduce-overhead");
    `capture`: the step (normexp.train.step; None: as `runtime.capture` decides)."""
    pack = Pack([seeded_model(run_config(cfg, seed)) for seed in range(pack_size)])
    fmt = harness.prepare_model(pack.model, cfg, device)
    train = harness.train_batches(cfg, data.train_images[index].to(device), data.train_labels[index].to(device),
                                  data.mean, data.std, range(pack_size), fmt)
    trainer = harness.build(cfg, pack, train, device, epochs, compile_mode, capture)
    return lambda epoch: trainer.epoch(epoch, cfg.trainer.log_every)


def normexp_rate(cfg: DictConfig, data: CifarArrays, index: torch.Tensor, pack_size: int,
                 device: torch.device, compile_mode: str | None = "config", capture: bool | None = None,
                 loop_only: bool = False) -> float:
    """Training images/s of `normexp_loop`'s second epoch (the first warms up, compiles and
    captures; its seconds go to `normexp_rate.first_seconds`): the whole epoch with its
    augmentation fill, or with `loop_only` the step loop alone (CUDA events on a GPU; the epoch's
    fill then goes to `normexp_rate.fill_seconds`)."""
    loop = normexp_loop(cfg, data, index, pack_size, device, compile_mode, capture)
    start = time.perf_counter()
    loop(1)
    normexp_rate.first_seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    record = loop(2).records[0]
    normexp_rate.fill_seconds = record["fill_seconds"]  # type: ignore[attr-defined]
    images = record["images_per_s"] * record["train_seconds"]  # a seed's images this epoch (no capture in it)
    rate = pack_size * images / (record["loop_seconds"] if loop_only else record["train_seconds"])
    torch._dynamo.reset()  # a next cell's model must not count against this one's compile cache
    return rate
