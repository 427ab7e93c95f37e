"""GPU probe: eager vs torch.compile (default, reduce-overhead) in normexp's `engine.train_epoch`.

Usage: python scripts/compile_probe.py [DEPTH] [HYDRA_OVERRIDE ...]
The config is composed from conf/ (`normexp-train`'s defaults, BN) with `model.depth=DEPTH` (default
8) and the overrides; the images are random. "batch" is images per step (data.devices x data.batch_size).
"""

from __future__ import annotations

import sys
import time

import torch

from normexp.compose import compose
from normexp.config import step_batch, validate
from normexp.data import TrainBatches
from normexp.nn.devices import split_batch_statistics
from normexp.nn.packing import Pack
from normexp.train import runtime
from normexp.train.conductor import member_config, seeded_model
from normexp.train.engine import train_epoch
from normexp.train.optim import build_optimizer, build_scheduler

MODES = ("eager", "default", "reduce-overhead")


def probe(depth: int, overrides: list[str], device: torch.device) -> None:
    """Print the first epoch's seconds (compilation included) and the second's rate per setting."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = (torch.arange(4096) % 10).to(device)
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    for batch in (2, 64):
        cfg = compose([f"model.depth={depth}", f"data.batch_size={batch}", *overrides])
        validate(cfg)
        step, n = step_batch(cfg), 1024 if batch == 2 else 4096
        for size in (1, 3):
            for mode in MODES:
                label = f"R{depth} {cfg.norm.name} b{step} pack{size} {mode}"
                pack = Pack([seeded_model(member_config(cfg, seed)) for seed in range(size)])
                split_batch_statistics(pack.model, cfg.data.devices)
                fmt = runtime.memory_format(cfg.runtime.channels_last, pack.model, device)
                pack.model.to(device, memory_format=fmt)
                train = TrainBatches(images[:n], labels[:n], step, mean, std, seeds=range(size), memory_format=fmt)
                optimizer = build_optimizer(pack.model, cfg.optim, step)
                scheduler = build_scheduler(optimizer, cfg.optim, train.steps, 3)
                forward = pack.model if mode == "eager" else torch.compile(
                    pack.model, mode=None if mode == "default" else mode)
                try:
                    start = time.perf_counter()
                    train_epoch(pack, forward, optimizer, scheduler, train, 1, cfg.trainer.log_every, 2)
                    first = time.perf_counter() - start
                    result = train_epoch(pack, forward, optimizer, scheduler, train, 2, cfg.trainer.log_every, 2)
                    rec = result.records[0]
                    print(f"{label}: first epoch {first:.1f}s, then {size * rec['images_per_s']:.0f} img/s "
                          f"({rec['train_seconds'] / train.steps * 1e3:.2f} ms/step), loss {rec['train_loss']:.3f}",
                          flush=True)
                except Exception as error:  # a probe: report the failing mode and go on with the next
                    print(f"{label}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)
                torch._dynamo.reset()


if __name__ == "__main__":
    args = sys.argv[1:]
    depth = int(args.pop(0)) if args and args[0].isdigit() else 8
    probe(depth, args, torch.device("cuda"))
