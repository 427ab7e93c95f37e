"""Training throughput: normexp's trainer vs the conventional torchvision loop, side by side.

Both train the same model with the same norm, batch size, threads and images; the conventional
loop is a torchvision-style dataset returning PIL images, RandomCrop/RandomHorizontalFlip/
ToTensor/Normalize transforms and a DataLoader. The arithmetic ceiling is the measured float32
matmul rate divided by the model's FLOPs per image (forward + backward).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from normexp import atomic
from normexp.config import Config, DataConfig
from normexp.data import TrainBatches, load_cifar10, stratified_subset
from normexp.models import CifarResNet
from normexp.norms import build_norm
from normexp.optim import build_optimizer, build_scheduler
from normexp.trainer import train_epoch

NORMS = {"bn": {"name": "bn"}, "gn8": {"name": "gn", "groups": 8}}


class PILDataset(Dataset):
    """What torchvision.datasets.CIFAR10 does: uint8 HWC arrays returned as PIL images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: transforms.Compose) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def flops_per_image(model: torch.nn.Module, batch: int = 16) -> float:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _model(cfg: Config, norm: dict) -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(build_norm(norm), depth=cfg.model.depth, base_width=cfg.model.base_width)


def normexp_rate(cfg, data, norm: dict, batch: int, images: int) -> float:
    """Images/s of the real training loop (`trainer.train_epoch`) over `images` images."""
    cfg.data.batch_size = batch
    index = stratified_subset(data.train_labels, images, 10)
    train = TrainBatches(data.train_images[index], data.train_labels[index], batch, data.mean, data.std, seed=0)
    model = _model(cfg, norm)
    optimizer = build_optimizer(model, cfg.optim, batch)
    scheduler = build_scheduler(optimizer, cfg.optim, len(train), 2)
    train_epoch(cfg, model, optimizer, scheduler, train, 1)  # warm-up
    record, _, _ = train_epoch(cfg, model, optimizer, scheduler, train, 2)
    return record["images_per_s"]


def conventional_rate(cfg, data, norm: dict, batch: int, images: int) -> float:
    """Images/s of the DataLoader + transforms loop, same model, optimizer and images."""
    index = stratified_subset(data.train_labels, images, 10)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(data.mean.tolist(), data.std.tolist()),
    ])
    loader = DataLoader(PILDataset(data.train_images[index], data.train_labels[index], transform),
                        batch_size=batch, shuffle=True, drop_last=True, num_workers=0)
    model = _model(cfg, norm)
    optimizer = build_optimizer(model, cfg.optim, batch)
    model.train()

    def epoch() -> int:
        seen = 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
        return seen

    epoch()  # warm-up
    start = time.perf_counter()
    seen = epoch()
    return seen / (time.perf_counter() - start)


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.processor()} ({torch.get_num_threads()} torch thread(s) of {os.cpu_count()} cores), torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--images", type=int, default=1024, help="images per timed epoch (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--folder", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = OmegaConf.structured(Config)
    cfg.model.depth, cfg.model.base_width = args.depth, args.base_width
    cfg.trainer.progress = False
    data = load_cifar10(DataConfig(source="folder", folder=args.folder))
    gflops = matmul_gflops()
    flops = flops_per_image(_model(cfg, NORMS["bn"]))
    ceiling = gflops * 1e9 / flops
    rows = []
    for norm in args.norms:
        for batch in args.batch_sizes:
            ours = normexp_rate(cfg, data, NORMS[norm], batch, args.images)
            conventional = conventional_rate(cfg, data, NORMS[norm], batch, args.images)
            rows.append({"norm": norm, "batch": batch, "normexp img/s": ours, "conventional img/s": conventional,
                         "speed-up": ours / conventional, "normexp % of ceiling": 100 * ours / ceiling})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Machine: {machine()}\n\nfloat32 2048x2048 matmul: {gflops:.0f} GFLOP/s; ResNet-{args.depth} "
              f"width {args.base_width}: {flops / 1e6:.0f} MFLOP per image forward+backward; arithmetic ceiling "
              f"{ceiling:.0f} img/s.\n\nCommand: `{command.strip()}`\n")
    text = header + "\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n"
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0
