"""GPU probe: eager vs torch.compile (default, reduce-overhead) in normexp's training loop, through
the benches' harness (normexp.train.timing's `normexp_rate`).

Usage: python scripts/probes/compile_probe.py [DEPTH] [HYDRA_OVERRIDE ...]
The config is composed from conf/ (`normexp-train`'s defaults, BN) with `model.depth=DEPTH` (default
8) and the overrides; the images are random. "batch" is images per step (data.devices x data.batch_size).
"""

from __future__ import annotations

import sys

import torch

from normexp.compose import compose
from normexp.config import step_batch, validate
from normexp.data import CifarArrays
from normexp.train.timing import normexp_rate

MODES = (None, "default", "reduce-overhead")


def probe(depth: int, overrides: list[str]) -> None:
    """Print the first epoch's seconds (compilation included) and the second's rate per setting."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=generator)
    data = CifarArrays(images, torch.arange(4096) % 10, images[:16], torch.arange(16) % 10,
                       torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26]), "random", "random")
    for batch in (2, 64):
        cfg = compose([f"model.depth={depth}", f"data.batch_size={batch}", "runtime.device=cuda", *overrides])
        validate(cfg)
        index = torch.arange(1024 if batch == 2 else 4096)
        for size in (1, 3):
            for mode in MODES:
                label = f"R{depth} {cfg.norm.name} b{step_batch(cfg)} pack{size} {mode or 'eager'}"
                try:
                    rate = normexp_rate(cfg, data, index, size, compile_mode=mode)
                    print(f"{label}: first epoch {rate.first_seconds:.1f}s, then {rate.images_per_s:.0f} img/s "
                          f"({step_batch(cfg) * size / rate.images_per_s * 1e3:.2f} ms/step)", flush=True)
                except Exception as error:  # a probe: report the failing mode and go on with the next
                    print(f"{label}: FAILED {type(error).__name__}: {str(error)[:300]}", flush=True)
                    torch._dynamo.reset()


if __name__ == "__main__":
    args = sys.argv[1:]
    depth = int(args.pop(0)) if args and args[0].isdigit() else 8
    probe(depth, args)
