"""Training throughput: normexp's trainer vs the conventional torchvision loop, side by side.

Both train the same model with the same norm, batch size, threads and images; normexp is timed
alone and with several seeds packed as one model (`seed=[...]`). The conventional loop is a
torchvision-style dataset returning PIL images, RandomCrop/RandomHorizontalFlip/ToTensor/Normalize
transforms and a DataLoader. The arithmetic ceiling is the measured float32
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
from hydra import compose, initialize_config_dir
from omegaconf import ListConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from normexp import atomic, packing
from normexp.config import Config, DataConfig
from normexp.data import EvalBatches, TrainBatches, load_cifar10, stratified_subset
from normexp.models import CifarResNet
from normexp.norms import build_norm
from normexp.optim import build_optimizer, build_scheduler
from normexp.train import CONF_DIR
from normexp.trainer import compiled, evaluate, memory_format, train_epoch

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


def matmul_gflops(device: torch.device, repeats: int = 5) -> float:
    """float32 matmul rate (2048^2 on CPU, 8192^2 on GPU), best of `repeats`."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def flops_per_image(model: torch.nn.Module, batch: int = 16) -> float:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def _model(cfg: Config, norm: dict, seed: int = 0) -> CifarResNet:
    torch.manual_seed(seed)
    return CifarResNet(build_norm(norm), depth=cfg.model.depth, base_width=cfg.model.base_width)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def normexp_rates(cfg, data, norm: dict, batch: int, images: int, pack: int, device: torch.device) -> tuple[float, float]:
    """Training images/s (all packed runs together) of normexp's own loop, `trainer.train_epoch`,
    on `pack` seeds packed as one model; and `trainer.evaluate`'s images/s (one model)."""
    cfg.data.batch_size = batch
    index = stratified_subset(data.train_labels, images, 10)
    model = packing.pack([_model(cfg, norm, seed) for seed in range(pack)])
    fmt = memory_format(cfg, model, device)
    model.to(device, memory_format=fmt)
    train = TrainBatches(data.train_images[index].to(device), data.train_labels[index].to(device), batch, data.mean,
                         data.std, seeds=range(pack), memory_format=fmt)
    test = EvalBatches(data.test_images[:images].to(device), data.test_labels[:images].to(device),
                       cfg.trainer.eval_batch_size, data.mean, data.std, memory_format=fmt)
    optimizer = build_optimizer(model, cfg.optim, batch)
    scheduler = build_scheduler(optimizer, cfg.optim, len(train), 2)
    forward = compiled(cfg, model, device)
    train_epoch(cfg, forward, optimizer, scheduler, train, 1)  # warm-up (and compilation, where it applies)
    records_, _, _ = train_epoch(cfg, forward, optimizer, scheduler, train, 2)
    solo = _model(cfg, norm).to(device, memory_format=fmt)
    evaluate(solo, test)
    start = time.perf_counter()
    evaluate(solo, test)
    return pack * records_[0]["images_per_s"], len(test) / (time.perf_counter() - start)


def conventional_rate(cfg, data, norm: dict, batch: int, images: int, device: torch.device, workers: int) -> float:
    """Images/s of the DataLoader + transforms loop, same model, optimizer and images."""
    index = stratified_subset(data.train_labels, images, 10)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(data.mean.tolist(), data.std.tolist()),
    ])
    loader = DataLoader(PILDataset(data.train_images[index], data.train_labels[index], transform),
                        batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model = _model(cfg, norm).to(device)
    optimizer = build_optimizer(model, cfg.optim, batch)
    model.train()

    def epoch() -> int:
        seen = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
        _sync(device)
        return seen

    epoch()  # warm-up
    start = time.perf_counter()
    seen = epoch()
    return seen / (time.perf_counter() - start)


def project_sweep(rows: pd.DataFrame, pack: int, experiment: str) -> str:
    """A BN/GN preset's training + evaluation time from the measured packed rates."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        claim = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    seeds = len(claim.seed) if isinstance(claim.seed, ListConfig) else 1
    params = claim.hydra.sweeper.params
    norms = {"bn": "bn", "gn": "gn8"}
    batches = [int(b) for b in str(params["data.batch_size"]).split(",")]
    train_images = seeds * (claim.data.train_subset or 50_000) * claim.trainer.epochs
    evals = -(-claim.trainer.epochs // claim.trainer.eval_every)
    eval_images = seeds * 10_000 * evals
    seconds = 0.0
    for norm in str(params.norm).split(","):
        for batch in batches:
            row = rows[(rows["norm"] == norms[norm]) & (rows["batch"] == batch)]
            if row.empty or seeds != pack:
                return f"No {experiment} projection: the table lacks {norms[norm]} at batch {batch} or --pack != {seeds}."
            seconds += train_images / row.iloc[0]["packed img/s"] + eval_images / row.iloc[0]["eval img/s"]
    return (f"Projected `{experiment}` sweep ({len(batches) * 2} jobs of {seeds} seeds, all packed, "
            f"{claim.trainer.epochs} epochs of {claim.data.train_subset or 50_000} images, {evals} evaluation(s) of "
            f"10,000): {seconds / 60:.1f} min one job at a time; J jobs in parallel on J times the resources: about 1/J.")


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
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
    parser.add_argument("--pack", type=int, default=3, help="seeds packed into one model (default %(default)s)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the conventional loop")
    parser.add_argument("--project", default="claim", help="preset whose sweep time to project (default %(default)s)")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--base-width", type=int, default=16)
    parser.add_argument("--folder", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--out", type=Path, help="write the table (Markdown) here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = OmegaConf.structured(Config)
    cfg.model.depth, cfg.model.base_width = args.depth, args.base_width
    cfg.trainer.progress = False
    device = torch.device(args.device)
    data = load_cifar10(DataConfig(source="folder", folder=args.folder))
    gflops = matmul_gflops(device)
    flops = flops_per_image(_model(cfg, NORMS["bn"]))
    ceiling = gflops * 1e9 / flops
    rows = []
    for norm in args.norms:
        for batch in args.batch_sizes:
            conventional = conventional_rate(cfg, data, NORMS[norm], batch, args.images, device, args.workers)
            solo, _ = normexp_rates(cfg, data, NORMS[norm], batch, args.images, 1, device)
            packed, evals = normexp_rates(cfg, data, NORMS[norm], batch, args.images, args.pack, device)
            rows.append({"norm": norm, "batch": batch, "conventional img/s": conventional, "normexp img/s": solo,
                         "packed img/s": packed, "speed-up": solo / conventional,
                         "packed speed-up": packed / conventional, "packed % of ceiling": 100 * packed / ceiling,
                         "eval img/s": evals})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    command = "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (f"Machine: {machine(device)}\n\nfloat32 matmul: {gflops:.0f} GFLOP/s; ResNet-{args.depth} "
              f"width {args.base_width}: {flops / 1e6:.0f} MFLOP per image forward+backward; arithmetic ceiling "
              f"{ceiling:.0f} img/s.\n\nCommand: `{command.strip()}`\n\n"
              f"normexp: one run; packed: {args.pack} seeds packed as one model, images/s of all of them together; "
              f"eval: one model's test-set evaluation at batch {cfg.trainer.eval_batch_size}.\n")
    text = header + "\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n\n" + project_sweep(table, args.pack, args.project) + "\n"
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0
