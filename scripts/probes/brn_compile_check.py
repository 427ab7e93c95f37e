"""Does torch.compile change Batch Renorm's training? BRN at 32 images per device (8 devices, the
`fixes` setup) trained eager and compiled from the same initialization on the same CIFAR-10 batches.

Three trajectories over STEPS steps: eager, compiled (inductor, as `runtime.compile=true` runs it),
and eager from an initialization perturbed at float rounding (1e-7 relative): the last shows how far
rounding-level differences grow by themselves in this training, the yardstick for the compiled one.
Besides, the gradients of compiled and eager on one identical state and batch, at step 0 and after
the trajectory (past BRN's warm-up, where r and d clip). Prints a Markdown table.

Run:  python scripts/probes/brn_compile_check.py [STEPS]   (about 15 min of one CPU core at 300 steps)
"""

from __future__ import annotations

import copy
import itertools
import sys
import time

import torch

from normexp.compose import compose
from normexp.config import step_batch
from normexp.data import TrainBatches, load_cifar10
from normexp.nn.devices import split_batch_statistics
from normexp.nn.packing import Pack
from normexp.train.harness import run_config, seeded_model
from normexp.train.optim import build_optimizer, build_scheduler


def trajectory(cfg, model, batches, steps: int, compiled: bool) -> tuple[list[float], torch.nn.Module]:
    """Per-step losses of `steps` steps of the run's training from `model` (a copy is trained)."""
    model = copy.deepcopy(model)
    pack = Pack([model])
    optimizer = build_optimizer(pack.model, cfg.optim, step_batch(cfg))
    scheduler = build_scheduler(optimizer, cfg.optim, batches.steps, cfg.trainer.epochs)
    forward = torch.compile(pack.model) if compiled else pack.model
    pack.model.train()
    losses = []
    stream = (batch for epoch in itertools.count(1) for batch in batches.epoch(epoch))  # epochs in order
    for _, (x, y) in zip(range(steps), stream):
        loss, _ = pack.losses(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses, pack.model


def gradient_gap(cfg, model, x, y) -> float:
    """The largest relative difference of compiled and eager gradients on one state and batch."""
    grads = []
    for compiled in (False, True):
        copy_ = copy.deepcopy(model).train()
        forward = torch.compile(copy_) if compiled else copy_
        loss, _ = Pack([copy_]).losses(forward(x), y)
        loss.sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in copy_.parameters()]))
    return ((grads[1] - grads[0]).abs().max() / grads[0].abs().max()).item()


def main(steps: int) -> None:
    torch.set_num_threads(1)
    cfg = run_config(compose(["experiment=fixes", "norm=brn", "data.batch_size=32", "seed=0"]), 0)
    data = load_cifar10(cfg.data.source, cfg.paths, cfg.runtime.download)
    model = split_batch_statistics(seeded_model(cfg), cfg.data.devices)
    batches = TrainBatches(data.train_images, data.train_labels, step_batch(cfg), data.mean, data.std, seeds=[0])
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.mul_(1 + 1e-7 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    x, y = next(iter(batches.epoch(1)))
    start = time.perf_counter()
    gap_start = gradient_gap(cfg, model, x, y)
    eager, trained = trajectory(cfg, model, batches, steps, compiled=False)
    compiled, _ = trajectory(cfg, model, batches, steps, compiled=True)
    rounding, _ = trajectory(cfg, perturbed, batches, steps, compiled=False)
    gap_end = gradient_gap(cfg, trained, x, y)
    print(f"BRN b32x8 (ResNet-8, fixes setup), {steps} steps of {step_batch(cfg)} images, torch {torch.__version__}, "
          f"1 CPU thread, {time.perf_counter() - start:.0f} s\n")
    print("| step | eager loss | compiled loss | perturbed-eager loss | compiled - eager | perturbed - eager |")
    print("|---|---|---|---|---|---|")
    for i in sorted({0, 9, 24, 49, 99, 199, steps - 1} & set(range(steps))):
        print(f"| {i + 1} | {eager[i]:.4f} | {compiled[i]:.4f} | {rounding[i]:.4f} | {compiled[i] - eager[i]:+.2e} | "
              f"{rounding[i] - eager[i]:+.2e} |")
    window = slice(max(0, steps - 50), steps)
    mean = lambda v: sum(v[window]) / len(v[window])  # noqa: E731
    print(f"\nmean loss over the last 50 steps: eager {mean(eager):.4f}, compiled {mean(compiled):.4f}, "
          f"perturbed eager {mean(rounding):.4f}")
    print(f"largest relative gradient difference compiled vs eager, one state and batch: step 0 {gap_start:.1e}, "
          f"after {steps} steps {gap_end:.1e}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
