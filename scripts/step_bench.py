"""The training step, eager against the device step (normexp.train.step), per batch size.

For each images/device N of the preset (its `data.devices` virtual devices, its seeds packed as one
model, its model and norm), times whole epochs of `engine.train_epoch` with today's eager step and
with the device step (`runtime.capture=true`: a CUDA graph on a GPU, the same ops eagerly on CPU),
after one untimed epoch that warms up, compiles and captures. With --side-by-side, also the device
step of every timed cell while all of them train at once, each in a thread on its own CUDA stream
(as `hydra/launcher=threads` runs a sweep's jobs). Reports ms per optimizer step, sustained TFLOP/s
(the model's FLOPs per image forward + backward x images per second) and the preset's sweep time
projected from the faster step one job at a time and, side by side, from each job's shared pace,
with each job's test-set evaluations (timed apart, `evaluation s`) added.

Run:  python scripts/step_bench.py --help
"""

from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from omegaconf import DictConfig

from normexp.compose import compose, grid, preset
from normexp.config import DEVICES, seeds, step_batch, validate
from normexp.data import CifarArrays, EvalBatches, load_cifar10, stratified_subset
from normexp.data.loader import maybe_subset
from normexp.files import atomic
from normexp.record import norm_tag
from normexp.train import harness, runtime
from normexp.train.engine import evaluate
from normexp.train.timing import flops_per_image, normexp_loop, normexp_rate, timed

SIDE = "side-by-side ms/step"  # the device step of every timed cell at once
EVAL = "evaluation s"  # one test-set evaluation of every packed seed, one after another (as training does)
FILL = "fill s/epoch"  # an epoch's augmentation fill of every packed seed, at the full training set


def timed_index(cfg: DictConfig, data: CifarArrays, steps: int) -> torch.Tensor:
    """The training images of a timed epoch of `steps` optimizer steps (every class alike)."""
    return stratified_subset(data.train_labels, steps * step_batch(cfg), cfg.model.num_classes)


def ms_per_step(cfg: DictConfig, data: CifarArrays, steps: int, capture: bool) -> tuple[float, float]:
    """Milliseconds per optimizer step of the preset's seeds packed (the step loop alone), over a
    timed epoch of `steps` steps after an untimed one (normexp.train.timing.normexp_rate), and the seconds of
    that epoch's augmentation fill scaled to the full training set."""
    members = len(seeds(cfg))
    rate = normexp_rate(cfg, data, timed_index(cfg, data, steps), members, capture=capture, loop_only=True)
    full = min(cfg.data.train_subset or data.train_labels.numel(), data.train_labels.numel())
    return 1000 * members * step_batch(cfg) / rate.images_per_s, rate.fill_seconds * full / (steps * step_batch(cfg))


def evaluation_seconds(cfg: DictConfig, data: CifarArrays) -> float:
    """Seconds of one evaluation of the test set by each of the cell's seeds (normexp.train.engine.
    evaluate, each seed as a single model, as training evaluates packed runs), timed after one
    untimed pass; the model is untrained (the time does not depend on the weights)."""
    model = harness.seeded_model(harness.run_config(cfg, seeds(cfg)[0]))
    env = runtime.job_environment(cfg, model)
    harness.prepare_model(model, cfg, env)
    test_x, test_y = maybe_subset(data.test_images, data.test_labels, cfg.data.test_subset, cfg.model.num_classes)
    batches = EvalBatches(test_x.to(env.device), test_y.to(env.device), cfg.runtime.eval_batch_size, data.mean,
                          data.std, memory_format=env.layout)
    evaluate(model, batches)
    return len(seeds(cfg)) * timed(lambda: evaluate(model, batches), env.device)


def side_by_side_ms(cells: list[DictConfig], data: CifarArrays, steps: int, device: torch.device,
                    seconds: float) -> list[float]:
    """Milliseconds per step of each cell's device step (its seeds packed) while all cells train at
    once, each in a thread on its own CUDA stream. The cells are built, warmed up and captured one
    after another (an untimed epoch each); then every thread counts the epochs of `steps` steps it
    finishes within a common window of `seconds`, and trains on past the window, so that all of
    them run throughout it. NaN where a cell finished no epoch inside the window; an error in any
    thread stops them all and is raised here."""
    cuda = device.type == "cuda"
    streams = [torch.cuda.Stream(device) if cuda else None for _ in cells]
    loops = []
    for cfg, stream in zip(cells, streams):
        with torch.cuda.stream(stream) if cuda else nullcontext():
            loops.append(normexp_loop(cfg, data, timed_index(cfg, data, steps), len(seeds(cfg)), capture=True,
                                      epochs=10**6))
            loops[-1](1)
    if cuda:
        torch.cuda.synchronize(device)
    start: list[float] = []
    barrier = threading.Barrier(len(cells), action=lambda: start.append(time.perf_counter()))
    paces, errors = [float("nan")] * len(cells), []

    def train(i: int) -> None:
        try:
            with torch.cuda.stream(streams[i]) if cuda else nullcontext():
                barrier.wait()
                epoch, done = 2, 0
                while time.perf_counter() - start[0] <= seconds:
                    # an epoch ends by reading its totals: this stream has finished it
                    if all(loops[i](epoch).diverged):
                        raise RuntimeError(f"{norm_tag(cells[i].norm)} at {cells[i].data.batch_size} images/device "
                                           "diverged while timed")
                    now = time.perf_counter() - start[0]
                    if now <= seconds:
                        done += steps
                        paces[i] = 1000 * now / done
                    epoch += 1
        except BaseException as error:  # noqa: B036 (handed to the main thread, which raises it)
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=train, args=(i,), name=f"cell-{i}") for i in range(len(cells))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if errors:
        raise (real or errors)[0]
    return paces


def projected_minutes(table: pd.DataFrame, jobs: list[DictConfig], data: CifarArrays) -> dict[str, float]:
    """The sweep's minutes: "one at a time" (the sum of each job's steps at its faster step) and,
    where the table has the side-by-side column, "side by side" (the longest of its jobs' steps at
    their shared pace, an upper bound: a job speeds up as others finish; left out if a cell has no
    pace); each job's evaluations added where the table has their column, and its epochs' fills to
    the one-at-a-time sum (the side-by-side pace, whole epochs, holds them). Empty if a job's cell
    is not in the table."""
    alone, shared = 0.0, []
    for cfg in jobs:
        row = table[(table["norm"] == norm_tag(cfg.norm)) & (table["images/device"] == cfg.data.batch_size)]
        if row.empty:
            return {}
        steps = (min(cfg.data.train_subset or data.train_labels.numel(), data.train_labels.numel())
                 // step_batch(cfg)) * cfg.trainer.epochs
        evaluations = -(-cfg.trainer.epochs // cfg.trainer.eval_every)  # every eval_every epochs and the last
        evaluating = evaluations * row.iloc[0][EVAL] if EVAL in table else 0.0
        filling = cfg.trainer.epochs * row.iloc[0][FILL] if FILL in table else 0.0  # the side-by-side pace has it
        alone += steps * min(row.iloc[0]["eager ms/step"], row.iloc[0]["device ms/step"]) / 1000 + evaluating + filling
        if SIDE in table:
            shared.append(steps * row.iloc[0][SIDE] / 1000 + evaluating)
    return {"one job at a time, at the faster step": alone / 60,
            **({f"all {len(jobs)} jobs side by side, device step": max(shared) / 60}
               if shared and all(map(math.isfinite, shared)) else {})}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every composed config")
    parser.add_argument("--project", default="claim", help="preset to time and project (default %(default)s)")
    parser.add_argument("--norms", nargs="+", help="norm options; default: the preset's swept norms")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="images per device; default: the preset's")
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per timed epoch (default %(default)s)")
    parser.add_argument("--side-by-side", type=float, metavar="SECONDS", help="also time every cell's device step "
                        "with all cells training at once, over a window of SECONDS (a GPU's question)")
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
    flops = flops_per_image(harness.seeded_model(harness.run_config(base, 0)))
    rows, cells = [], []
    for name, batch in itertools.product(args.norms or swept.get("norm") or [base.norm.name],
                                         args.batch_sizes or [int(b) for b in swept.get("data.batch_size", [])]):
        cfg = compose([common[0], f"norm={name}", f"data.batch_size={batch}", *common[1:]])
        validate(cfg)
        (eager, _), (captured, fill) = (ms_per_step(cfg, data, args.steps, capture) for capture in (False, True))
        images = step_batch(cfg) * len(seeds(cfg))
        rows.append({"norm": norm_tag(cfg.norm), "images/device": batch, "devices": cfg.data.devices,
                     "images/step (all seeds)": images, "eager ms/step": eager, "device ms/step": captured,
                     "speed-up": eager / captured, "TFLOP/s": flops * images / (min(eager, captured) / 1000) / 1e12,
                     FILL: fill, EVAL: evaluation_seconds(cfg, data)})
        cells.append(cfg)
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    side = ""
    if args.side_by_side:
        table[SIDE] = side_by_side_ms(cells, data, args.steps, device, args.side_by_side)
        timed = table[SIDE].notna()
        shared = (flops * table["images/step (all seeds)"][timed] / (table[SIDE][timed] / 1000)).sum() / 1e12
        side = (f"Side by side: all {len(cells)} cells' device steps at once, each in a thread on its own "
                f"{'CUDA stream' if device.type == 'cuda' else 'CPU thread'}, over {args.side_by_side:g} s; "
                f"together {shared:.3g} TFLOP/s"
                + (f" ({(~timed).sum()} cell(s) finished no epoch inside the window and are not counted: "
                   f"widen --side-by-side)" if (~timed).any() else "") + ".\n\n")
    minutes = projected_minutes(table, [compose([common[0], *job, *common[1:]]) for job in grid(params, [])], data)
    step_kind = "a CUDA graph replayed" if device.type == "cuda" else "the captured step's ops run eagerly"
    text = (f"Machine: {runtime.device_name(device)}, {torch.get_num_threads()} torch thread(s), torch "
            f"{torch.__version__}\n\nCommand: "
            f"`{shlex.join(['python', 'scripts/step_bench.py', *(argv or sys.argv[1:])])}`\n\n"
            f"`experiment={args.project}`, {len(seeds(base))} seed(s) packed, {args.steps} timed steps after one "
            f"untimed epoch; device step: {step_kind}; eager step: `runtime.compile={base.runtime.compile}` (null: "
            f"compiled with torch's CUDA graphs on a GPU, runtime.py); {flops / 1e6:.0f} MFLOP per image "
            f"forward+backward.\n\n"
            + table.to_markdown(index=False, floatfmt=".3g") + "\n\n" + side
            + ("".join(f"Projected `{args.project}`, {how}: {value:.1f} min (training steps, every epoch's "
                       f"augmentation fill, `{FILL}`, and every evaluation, `{EVAL}` per evaluated epoch; warm-up, "
                       f"capture and compilation not included).\n" for how, value in minutes.items()) if minutes else
               f"No `{args.project}` projection: the table lacks some of its cells.\n"))
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
