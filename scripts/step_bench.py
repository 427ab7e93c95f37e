"""The training step, eager against the device step (normexp.train.step), per batch size.

For each images/device N of the preset (its `data.devices` virtual devices, its seeds packed as one
model, its model and norm), times whole epochs of `engine.train_epoch` with today's eager step and
with the device step (`runtime.capture=true`: a CUDA graph on a GPU, the same ops eagerly on CPU),
after one untimed epoch that warms up, compiles and captures. Reports ms per optimizer step,
sustained TFLOP/s (the model's FLOPs per image forward + backward x images per second) and the
preset's sweep time projected from the faster step, one job at a time, evaluation not included.

Run:  python scripts/step_bench.py --help
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from normexp.compose import compose, grid, preset
from normexp.config import DEVICES, seeds, step_batch, validate
from normexp.data import CifarArrays, TrainBatches, load_cifar10, stratified_subset
from normexp.nn.devices import split_batch_statistics
from normexp.nn.packing import Pack
from normexp.record import atomic, norm_tag
from normexp.train import runtime
from normexp.train.conductor import member_config, seeded_model
from normexp.train.engine import train_epoch
from normexp.train.optim import build_optimizer, build_scheduler
from normexp.train.step import build_step


def flops_per_image(cfg: DictConfig, batch: int = 16) -> float:
    """The model's FLOPs per image of a training step (forward + backward), by torch's counter."""
    model = seeded_model(member_config(cfg, 0))
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def ms_per_step(cfg: DictConfig, data: CifarArrays, steps: int, device: torch.device, capture: bool) -> float:
    """Milliseconds per optimizer step over a timed epoch of `steps` steps, after an untimed one."""
    members = seeds(cfg)
    pack = Pack([seeded_model(member_config(cfg, seed)) for seed in members])
    split_batch_statistics(pack.model, cfg.data.devices)
    fmt = runtime.memory_format(cfg.runtime.channels_last, pack.model, device)
    pack.model.to(device, memory_format=fmt)
    index = stratified_subset(data.train_labels, steps * step_batch(cfg), cfg.model.num_classes)
    train = TrainBatches(data.train_images[index].to(device), data.train_labels[index].to(device), step_batch(cfg),
                         data.mean, data.std, seeds=members, padding=cfg.data.crop_padding, flip=cfg.data.flip,
                         memory_format=fmt)
    optimizer = build_optimizer(pack.model, cfg.optim, step_batch(cfg))
    scheduler = build_scheduler(optimizer, cfg.optim, train.steps, 2)
    forward = runtime.maybe_compiled(cfg.runtime.compile, pack.model, device, capture)
    step = build_step(pack, forward, optimizer, train, device, capture, cfg.norm.name, cfg.trainer.precision)
    log_every = train.steps  # one host read per epoch, as a long run's log_every amortizes it
    train_epoch(pack, step, scheduler, train, 1, log_every, 2)
    start = time.perf_counter()
    train_epoch(pack, step, scheduler, train, 2, log_every, 2)  # synchronizes on CUDA before it returns
    seconds = time.perf_counter() - start
    if forward is not pack.model:
        torch._dynamo.reset()
    return 1000 * seconds / train.steps


def projected_minutes(table: pd.DataFrame, jobs: list[DictConfig], data: CifarArrays) -> Optional[float]:
    """The sweep's training time from the faster step's ms/step, one job at a time; None if a job's
    cell is not in the table."""
    total = 0.0
    for cfg in jobs:
        row = table[(table["norm"] == norm_tag(cfg.norm)) & (table["images/device"] == cfg.data.batch_size)]
        if row.empty:
            return None
        steps = (min(cfg.data.train_subset or data.train_labels.numel(), data.train_labels.numel())
                 // step_batch(cfg)) * cfg.trainer.epochs
        total += steps * min(row.iloc[0]["eager ms/step"], row.iloc[0]["device ms/step"]) / 1000
    return total / 60


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every composed config")
    parser.add_argument("--project", default="claim", help="preset to time and project (default %(default)s)")
    parser.add_argument("--norms", nargs="+", help="norm options; default: the preset's swept norms")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="images per device; default: the preset's")
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per timed epoch (default %(default)s)")
    parser.add_argument("--device", choices=DEVICES, help="runtime.device (default: the config's)")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here")
    args = parser.parse_intermixed_args(argv)
    common = [f"experiment={args.project}", *([f"runtime.device={args.device}"] if args.device else []),
              *args.overrides]
    base, params, swept = preset(common)
    validate(base)
    torch.set_num_threads(base.runtime.threads or 1)
    device = runtime.pick_device(base.runtime.device)
    data = load_cifar10(base.data.source, base.paths, base.runtime.download)
    flops = flops_per_image(base)
    rows = []
    for name, batch in itertools.product(args.norms or swept.get("norm") or [base.norm.name],
                                         args.batch_sizes or [int(b) for b in swept.get("data.batch_size", [])]):
        cfg = compose([common[0], f"norm={name}", f"data.batch_size={batch}", *common[1:]])
        validate(cfg)
        eager, captured = (ms_per_step(cfg, data, args.steps, device, capture) for capture in (False, True))
        images = step_batch(cfg) * len(seeds(cfg))
        rows.append({"norm": norm_tag(cfg.norm), "images/device": batch, "devices": cfg.data.devices,
                     "images/step (all seeds)": images, "eager ms/step": eager, "device ms/step": captured,
                     "speed-up": eager / captured, "TFLOP/s": flops * images / (min(eager, captured) / 1000) / 1e12})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    minutes = projected_minutes(table, [compose([common[0], *job, *common[1:]]) for job in grid(params, [])], data)
    step_kind = "a CUDA graph replayed" if device.type == "cuda" else "the captured step's ops run eagerly"
    text = (f"Machine: {runtime.environment(device)['device']}, {torch.get_num_threads()} torch thread(s), torch "
            f"{torch.__version__}\n\nCommand: `{shlex.join(['python', 'scripts/step_bench.py', *(argv or sys.argv[1:])])}`\n\n"
            f"`experiment={args.project}`, {len(seeds(base))} seed(s) packed, {args.steps} timed steps after one "
            f"untimed epoch; device step: {step_kind}; {flops / 1e6:.0f} MFLOP per image forward+backward.\n\n"
            + table.to_markdown(index=False, floatfmt=".3g") + "\n\n"
            + (f"Projected `{args.project}` training, one job at a time at the faster step: {minutes:.1f} min "
               f"(evaluation and compilation not included).\n" if minutes is not None else
               f"No `{args.project}` projection: the table lacks some of its cells.\n"))
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
