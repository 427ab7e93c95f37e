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
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from omegaconf import DictConfig

from normexp.compose import compose, grid, preset
from normexp.config import DEVICES, seeds, step_batch, validate
from normexp.data import CifarArrays, load_cifar10, stratified_subset
from normexp.record import atomic, norm_tag
from normexp.train import runtime
from normexp.train.conductor import member_config, seeded_model

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the throughput bench's timing, beside this script
from bench import flops_per_image, normexp_rate  # noqa: E402

def ms_per_step(cfg: DictConfig, data: CifarArrays, steps: int, device: torch.device, capture: bool) -> float:
    """Milliseconds per optimizer step of the preset's seeds packed, over a timed epoch of `steps`
    steps after an untimed one (bench.normexp_rate)."""
    members = len(seeds(cfg))
    index = stratified_subset(data.train_labels, steps * step_batch(cfg), cfg.model.num_classes)
    return 1000 * members * step_batch(cfg) / normexp_rate(cfg, data, index, members, device, capture=capture)


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
    flops = flops_per_image(seeded_model(member_config(base, 0)))
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
