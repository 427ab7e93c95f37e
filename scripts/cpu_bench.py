"""CPU training throughput, side by side in one process: a plain single-device model against
normexp's step, per norm, images per device, precision and memory layout.

"plain" is the ResNet of the preset (torchvision's norm-factory style) with one device's norm
layers, trained on one fixed batch of 8N images held as one tensor: forward under the precision's
autocast, cross-entropy on fp32 logits, backward, torch's SGD. "normexp" is `engine.train_epoch`
with the step training uses (per-device BN on the preset's virtual devices, each norm in its
kernel's precision: normexp.train.harness), one seed, epochs of real augmented CIFAR-10. Each is
timed over a whole epoch after an untimed one, one torch thread. "% of conv rate" is the model's
FLOPs (forward + backward) x images/s over the measured forward rate of one 16-channel 3x3
convolution in that precision and layout: a rough guide (the wider layers run faster than that
convolution, so it can pass 100 %, and the one-convolution timing is noisy). With --compile,
normexp's step is also timed under torch.compile (inductor's CPU backend), its first epoch apart.

Run:  python scripts/cpu_bench.py --out results/bench/cpu_step.md
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from normexp.compose import compose
from normexp.config import step_batch
from normexp.data import load_cifar10, stratified_subset
from normexp.files import atomic
from normexp.nn.precision import autocast
from normexp.train.harness import run_config, seeded_model
from normexp.train.optim import build_optimizer
from normexp.train.runtime import cpu_name
from normexp.train.timing import flops_per_image, normexp_loop

PRECISIONS = {"fp32": None, "bf16": "bf16"}
IMAGES = {"fp32": 2048, "bf16": 512}  # images per timed epoch (bf16 is emulated, slow, on CPUs without it)


def conv_gflops(precision: str, channels_last: bool, repeats: int = 5) -> float:
    """Forward rate of a 16-channel 3x3 convolution on 64 32x32 images, best of `repeats`."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).to(memory_format=fmt)
    x = torch.randn(64, 16, 32, 32).contiguous(memory_format=fmt)
    best = float("inf")
    with torch.no_grad(), autocast(PRECISIONS[precision], torch.device("cpu")):
        conv(x)
        for _ in range(repeats):
            start = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - start)
    return 2 * 64 * 16 * 16 * 9 * 32 * 32 / best / 1e9


def plain_rate(cfg, images: int) -> float:
    """Images/s of the plain loop (see the module's docstring) over `images` after a warm-up epoch."""
    model = seeded_model(run_config(cfg, 0))
    fmt = torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    batch = step_batch(cfg)
    x, y = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt), torch.randint(0, 10, (batch,))
    optimizer = build_optimizer(model, cfg.optim, batch)
    steps = max(1, images // batch)

    def epoch() -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(cfg.trainer.precision, x.device):
                logits = model(x)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits.float(), y).backward()
            optimizer.step()
        return steps * batch / (time.perf_counter() - start)

    epoch()
    return epoch()


def normexp_rate(cfg, data, images: int, compile_mode: str | None = None) -> tuple[float, float]:
    """Images/s of normexp's step over an epoch of `images` after a warm-up epoch, and the warm-up
    epoch's seconds (compilation included, with a torch.compile `compile_mode`)."""
    index = stratified_subset(data.train_labels, max(images, step_batch(cfg)), cfg.model.num_classes)
    loop = normexp_loop(cfg, data, index, 1, compile_mode=compile_mode)
    start = time.perf_counter()
    loop(1)
    first = time.perf_counter() - start
    return loop(2).records[0]["images_per_s"], first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="claim")
    parser.add_argument("--norms", nargs="+", default=["bn", "gn"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2, 32], help="images per device")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--compile", action="store_true",
                        help="also time normexp's step under torch.compile (inductor, default mode)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    conv = {(p, cl): conv_gflops(p, cl) for p in args.precisions for cl in (True, False)}
    rows = []
    for norm, n, precision, channels_last in itertools.product(args.norms, args.batch_sizes, args.precisions,
                                                               (True, False)):
        cfg = compose([f"experiment={args.preset}", f"norm={norm}", f"data.batch_size={n}", "seed=0",
                       "runtime.device=cpu", f"trainer.precision={PRECISIONS[precision] or 'null'}",
                       "runtime.threads=1", f"runtime.channels_last={str(channels_last).lower()}"])
        if not rows:
            data = load_cifar10(cfg.data.source, cfg.paths, cfg.runtime.download)
        flops = flops_per_image(seeded_model(run_config(cfg, 0)))
        plain, (ours, _) = plain_rate(cfg, IMAGES[precision]), normexp_rate(cfg, data, IMAGES[precision])
        rows.append({"norm": norm, "images/device": n, "devices": cfg.data.devices, "precision": precision,
                     "layout": "channels_last" if channels_last else "NCHW", "plain img/s": plain,
                     "normexp img/s": ours, "normexp / plain": ours / plain,
                     "% of conv rate": 100 * flops * ours / (conv[precision, channels_last] * 1e9)})
        if args.compile:
            compiled, first = normexp_rate(cfg, data, IMAGES[precision], "default")
            rows[-1].update({"compiled img/s": compiled, "compiled / eager": compiled / ours,
                             "first epoch s (compiling)": first})
            torch._dynamo.reset()
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1, float_format="%.2f"), flush=True)
    capability = torch.backends.cpu.get_cpu_capability()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rates = ", ".join(f"{p} {'channels_last' if cl else 'NCHW'} {g:.0f}" for (p, cl), g in conv.items())
    text = (f"# CPU training step: a plain model against normexp's, side by side\n\nMachine: "
            f"{cpu_name()}, torch's CPU capability {capability}, native bf16 "
            f"kernels: {'yes' if native else 'no'}; 1 torch thread; torch {torch.__version__}.\n\n"
            f"16-channel 3x3 convolution (64 images, 32x32, forward), GFLOP/s: {rates}.\n\n"
            f"Command: `python {' '.join(map(shlex.quote, sys.argv))}`\n\n"
            f"{pd.DataFrame(rows).to_markdown(index=False, floatfmt='.2f')}\n")
    print(text)
    if args.out:
        atomic.write_text(args.out, text)


if __name__ == "__main__":
    main()
