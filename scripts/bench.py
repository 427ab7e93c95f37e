"""Training throughput: normexp's loop vs the conventional torchvision loop, on a preset's configs.

Every timed configuration is composed from `conf/` as `normexp-train` composes it (the --project
preset, one of its norms and batch sizes, then any Hydra overrides), so the benchmark times the
defaults users get: model, per-device BatchNorm (`data.devices`), optimizer, memory layout and
compilation. BatchNorm normalizes each device's `data.batch_size` images ("images/device"); an
optimizer step trains on `data.devices x data.batch_size` ("images/step"). normexp's loop is timed
on one run and on several seeds packed as one model. The conventional loop trains the same model
(per-device BN included) eagerly from a torchvision-style dataset of PIL images with
RandomCrop/RandomHorizontalFlip/ToTensor/Normalize transforms and a DataLoader. The arithmetic
ceiling is the measured float32 matmul rate divided by the model's FLOPs per image (forward + backward).

Run:  python scripts/bench.py --help
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from normexp.compose import compose, grid, preset
from normexp.config import DEVICES, seeds, step_batch, validate
from normexp.data import CifarArrays, EvalBatches, load_cifar10, stratified_subset
from normexp.files import atomic
from normexp.nn.devices import split_batch_statistics
from normexp.record import norm_tag
from normexp.train import harness, runtime
from normexp.train.engine import evaluate
from normexp.train.optim import build_optimizer
from normexp.train.timing import flops_per_image, normexp_rate, timed

MIN_STEPS = 4  # optimizer steps per timed epoch at least, whatever --images says


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
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _model(cfg: DictConfig) -> tuple[nn.Module, runtime.Environment]:
    """The run's model with seed 0 set up as training sets it up (harness.prepare_model), and its environment."""
    model = harness.seeded_model(harness.run_config(cfg, 0))
    env = runtime.job_environment(cfg, model)
    harness.prepare_model(model, cfg, env)
    return model, env


def eval_rate(cfg: DictConfig, data: CifarArrays, images: int) -> float:
    """Test images/s of `engine.evaluate` on one model at `runtime.eval_batch_size`."""
    model, env = _model(cfg)
    test = EvalBatches(data.test_images[:images].to(env.device), data.test_labels[:images].to(env.device),
                       cfg.runtime.eval_batch_size, data.mean, data.std, memory_format=env.layout)
    evaluate(model, test)  # warm-up
    return test.images / timed(lambda: evaluate(model, test), env.device)


def conventional_rate(cfg: DictConfig, data: CifarArrays, index: torch.Tensor, device: torch.device,
                      workers: int) -> float:
    """Training images/s of the DataLoader + transforms loop: same model, optimizer and images."""
    augment = [transforms.RandomCrop(32, padding=cfg.data.crop_padding)]
    augment += [transforms.RandomHorizontalFlip()] if cfg.data.flip else []
    transform = transforms.Compose([*augment, transforms.ToTensor(),
                                    transforms.Normalize(data.mean.tolist(), data.std.tolist())])
    loader = DataLoader(PILDataset(data.train_images[index], data.train_labels[index], transform),
                        batch_size=step_batch(cfg), shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    model = split_batch_statistics(harness.seeded_model(harness.run_config(cfg, 0)), cfg.data.devices).to(device)
    optimizer = build_optimizer(model, cfg.optim, step_batch(cfg))
    model.train()

    def epoch() -> None:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    epoch()  # warm-up
    return len(loader) * step_batch(cfg) / timed(epoch, device)


def measure(cfg: DictConfig, data: CifarArrays, images: int, pack: int, workers: int, ceiling: float,
            device: torch.device) -> dict[str, object]:
    """One table row: the training loops' and evaluation's images/s for one config."""
    step = step_batch(cfg)
    timed = step * max(MIN_STEPS, -(-images // step))
    index = stratified_subset(data.train_labels, timed, cfg.model.num_classes)
    conventional = conventional_rate(cfg, data, index, device, workers)
    solo = normexp_rate(cfg, data, index, 1).images_per_s
    packed = solo if pack == 1 else normexp_rate(cfg, data, index, pack).images_per_s
    return {"norm": norm_tag(cfg.norm), "images/device": cfg.data.batch_size, "devices": cfg.data.devices,
            "images/step": step, "timed steps": timed // step, "conventional img/s": conventional,
            "normexp img/s": solo, "packed img/s": packed, "speed-up": solo / conventional,
            "packed speed-up": packed / conventional, "packed % of ceiling": 100 * packed / ceiling,
            "eval img/s": eval_rate(cfg, data, max(images, cfg.runtime.eval_batch_size))}


def project_sweep(table: pd.DataFrame, jobs: list[DictConfig], measured: DictConfig, pack: int,
                  data: CifarArrays, device: torch.device, project: str) -> str:
    """The preset's sweep time, training + evaluation, one job at a time, from the measured rates.
    Like the conductor, a job trains its seeds packed if a step holds at most `harness.pack_limit`
    images (packed rate), else one seed after another (normexp's rate)."""
    seconds, runs, packed_jobs, train_images, eval_images = 0.0, 0, 0, 0, 0
    for cfg in jobs:
        k, step, tag = len(seeds(cfg)), step_batch(cfg), norm_tag(cfg.norm)
        packed = harness.trains_packed(cfg, device, k)
        row = table[(table["norm"] == tag) & (table["images/device"] == cfg.data.batch_size)
                    & (table["devices"] == cfg.data.devices)]
        if row.empty or cfg.model != measured.model:
            return (f"No `{project}` projection: the table lacks {tag} at {cfg.data.batch_size} images/device x "
                    f"{cfg.data.devices} device(s) with the preset's model.")
        if packed and k != pack:
            return f"No `{project}` projection: its jobs train {k} seeds packed, the table {pack} (--pack {k})."
        train_n = min(cfg.data.train_subset or data.train_labels.numel(), data.train_labels.numel())
        test_n = min(cfg.data.test_subset or data.test_labels.numel(), data.test_labels.numel())
        trained = k * (train_n // step) * step * cfg.trainer.epochs
        evaluated = k * test_n * -(-cfg.trainer.epochs // cfg.trainer.eval_every)
        rate = row.iloc[0]["packed img/s" if packed else "normexp img/s"]
        seconds += trained / rate + evaluated / row.iloc[0]["eval img/s"]
        runs, packed_jobs = runs + k, packed_jobs + packed
        train_images, eval_images = train_images + trained, eval_images + evaluated
    return (f"Projected `{project}` sweep: {len(jobs)} jobs, {runs} runs ({packed_jobs} jobs packed, where a step "
            f"holds at most {harness.pack_limit(jobs[0], device)} images on {device.type}), {train_images:,} training "
            f"and {eval_images:,} test images: {seconds / 60:.1f} min one job at a time, compilation not included; "
            f"J jobs in parallel on J times the resources: about 1/J.")


def machine(device: torch.device) -> str:
    """The processor or GPU, threads and torch version, for the report's first line."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                      if line.startswith("Model name")), "")
    except (OSError, subprocess.TimeoutExpired):
        model = ""
    return (f"{model or platform.processor()} ({torch.get_num_threads()} torch thread(s) of {os.cpu_count()} cores), "
            f"torch {torch.__version__}")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Model, norms, devices, optimizer, threads (runtime.threads; null: 1, a joblib sweep job's share "
               "on CPU), compilation and data folder come from the preset and the overrides, e.g. "
               "`paths.cifar10_folder=DIR model.depth=20 runtime.threads=2`.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every composed config")
    parser.add_argument("--project", default="claim", help="preset (conf/experiment/) to time and whose sweep to "
                        "project (default %(default)s)")
    parser.add_argument("--norms", nargs="+", help="norm options (conf/norm/); default: the preset's swept norms")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="images per device (data.batch_size); default: the preset's swept ones")
    parser.add_argument("--images", type=int, default=1024, help="images per timed pass (default %(default)s; "
                        f"training: whole steps, at least {MIN_STEPS}; test: at least one evaluation batch)")
    parser.add_argument("--pack", type=int, help="seeds packed into one model (default: the preset's seed count)")
    parser.add_argument("--device", choices=DEVICES, help="runtime.device (default: the config's)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the conventional loop")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    device_override = [f"runtime.device={args.device}"] if args.device else []
    common = [f"experiment={args.project}", *device_override, *args.overrides]
    base, params, swept = preset(common)
    validate(base)
    norms = args.norms or swept.get("norm") or [OmegaConf.select(base, "norm.name")]
    batches = args.batch_sizes or [int(b) for b in swept.get("data.batch_size", [base.data.batch_size])]
    pack = args.pack or len(seeds(base))
    torch.set_num_threads(base.runtime.threads or 1)
    device = runtime.pick_device(base.runtime.device)
    data = load_cifar10(base.data.source, base.paths, base.runtime.download)
    gflops = matmul_gflops(device)
    flops = flops_per_image(harness.seeded_model(harness.run_config(base, 0)))
    ceiling = gflops * 1e9 / flops
    rows = []
    for name, batch in itertools.product(norms, batches):
        cfg = compose([*common[:1], f"norm={name}", f"data.batch_size={batch}", *common[1:]])
        validate(cfg)
        rows.append(measure(cfg, data, args.images, pack, args.workers, ceiling, device))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    jobs = [compose([*common[:1], *job, *common[1:]]) for job in grid(params, [])]
    command = shlex.join(["python", "scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Machine: {machine(device)}\n\nfloat32 matmul: {gflops:.0f} GFLOP/s; ResNet-{base.model.depth} "
              f"width {base.model.base_width}: {flops / 1e6:.0f} MFLOP per image forward+backward; arithmetic "
              f"ceiling {ceiling:.0f} img/s.\n\nCommand: `{command}`\n\n"
              f"Configs: `experiment={args.project}` with each norm and batch size. images/device: data.batch_size, "
              f"the batch BatchNorm normalizes over; images/step: data.devices x images/device, what one optimizer "
              f"step trains on. normexp: one run; packed: {pack} seed(s) packed as one model, images/s of all of them "
              f"together; eval: one model's test-set evaluation at batch {base.runtime.eval_batch_size}.\n")
    text = (header + "\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n\n"
            + project_sweep(table, jobs, base, pack, data, device, args.project) + "\n")
    print(text)
    if args.out:
        atomic.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
