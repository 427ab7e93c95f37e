"""Host memory one epoch's fill takes (TrainBatches.fill): the epoch buffer of K packed seeds and the
peak of the temporaries beside it, as the peak resident set size grows, on CPU with random images
of CIFAR-10's training split's size. On a GPU a job holds the same tensors in device memory.

Usage: python scripts/probes/fill_memory.py [--seeds 5] [--images 50000]
"""

from __future__ import annotations

import argparse
import resource

import torch

from normexp.data import TrainBatches


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="packed seeds (claim_gpu: 5)")
    parser.add_argument("--images", type=int, default=50_000, help="training images (CIFAR-10: 50,000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    train = TrainBatches(images, torch.arange(args.images) % 10, 16, torch.full((3,), 0.5), torch.full((3,), 0.25),
                         seeds=range(args.seeds), memory_format=torch.channels_last)
    x, y = train.buffers()
    x.zero_(), y.zero_()  # touched, so that the baseline holds the buffer
    before = peak_gb()
    train.fill(1, x, y)
    print(f"{args.seeds} seeds of {args.images} images: buffer {x.numel() * x.element_size() / 1e9:.2f} GB, "
          f"fill's temporaries {peak_gb() - before:.2f} GB at their peak (torch {torch.__version__})")


if __name__ == "__main__":
    main()
