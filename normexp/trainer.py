"""Train and evaluate one configuration, writing a resumable run record."""

from __future__ import annotations

import logging
import math
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from normexp import atomic, records
from normexp.config import validate
from normexp.data import EvalBatches, TrainBatches, load_cifar10
from normexp.data.loader import maybe_subset
from normexp.models import CifarResNet
from normexp.norms import build_norm, norm_tag
from normexp.optim import build_optimizer, build_scheduler, scaled_lr

log = logging.getLogger("normexp")


def build_model(cfg: DictConfig) -> nn.Module:
    """The configured ResNet with the configured norm; bad norm settings raise ConfigError here."""
    return CifarResNet(
        build_norm(OmegaConf.to_container(cfg.norm, resolve=True)),
        depth=cfg.model.depth,
        base_width=cfg.model.base_width,
        num_classes=cfg.model.num_classes,
        zero_init_residual=cfg.model.zero_init_residual,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu")
    return torch.device(name)


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


@torch.no_grad()
def evaluate(model: nn.Module, batches: EvalBatches) -> tuple[float, float]:
    """Test loss and accuracy (%) in eval mode (BN uses its running statistics)."""
    model.eval()
    loss_sum = torch.zeros((), device=batches.x.device)
    correct = torch.zeros((), device=batches.x.device, dtype=torch.int64)
    for x, y in batches:
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    model.train()
    return loss_sum.item() / len(batches), 100.0 * correct.item() / len(batches)


def epochs_to_reach(metrics: list[dict[str, Any]], thresholds: list[float]) -> dict[str, Optional[int]]:
    """First epoch whose test accuracy reaches each threshold (None if never)."""
    return {
        f"{t:g}": next((m["epoch"] for m in metrics if (m["test_acc"] or 0.0) >= t), None) for t in thresholds
    }


def _fmt(value: Optional[float], pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


class _FileLog:
    """Attach a file handler for the run's log to the `normexp` logger for a block."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def __enter__(self) -> None:
        log.addHandler(self.handler)
        if log.level == logging.NOTSET or log.level > logging.INFO:
            log.setLevel(logging.INFO)

    def __exit__(self, *exc: object) -> None:
        log.removeHandler(self.handler)
        self.handler.close()


def train_run(cfg: DictConfig) -> Optional[dict[str, Any]]:
    """Run one configuration to completion (resuming if it was interrupted); return its summary.

    Returns None when another process holds the run. All settings are checked before any data is
    decoded or any step is trained.
    """
    validate(cfg)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    directory = records.run_dir(cfg)
    with records.claim(directory) as claimed:
        if not claimed:
            log.info("%s is being trained by another process; skipping it", directory)
            return None
        records.remove_stale_temps(directory)
        summary = records.read_json(directory / records.SUMMARY)
        if summary is not None:
            log.info("%s already done (%s); skipping it", directory.name, summary["status"])
            return summary
        with _FileLog(directory / records.LOG):
            try:
                return _train(cfg, model, directory)
            except Exception as error:
                atomic.write_json(directory / records.ERROR, {
                    "type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc(),
                })
                raise


def _train(cfg: DictConfig, model: nn.Module, directory: Path) -> dict[str, Any]:
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    device = pick_device(cfg.trainer.device)
    atomic.write_text(directory / records.CONFIG, OmegaConf.to_yaml(cfg, resolve=True))

    data = load_cifar10(cfg.data)
    train_x, train_y = maybe_subset(data.train_images, data.train_labels, cfg.data.train_subset, cfg.model.num_classes)
    test_x, test_y = maybe_subset(data.test_images, data.test_labels, cfg.data.test_subset, cfg.model.num_classes)
    train = TrainBatches(train_x.to(device), train_y.to(device), cfg.data.batch_size, data.mean, data.std,
                         seed=cfg.seed, padding=cfg.data.crop_padding, flip=cfg.data.flip)
    test = EvalBatches(test_x.to(device), test_y.to(device), cfg.trainer.eval_batch_size, data.mean, data.std)

    model.to(device)
    optimizer = build_optimizer(model, cfg.optim, cfg.data.batch_size)
    scheduler = build_scheduler(optimizer, cfg.optim, len(train), cfg.trainer.epochs)
    metrics: list[dict[str, Any]] = []
    loss_log: list[dict[str, Any]] = []
    elapsed = 0.0
    checkpoint_path = directory / records.CHECKPOINT
    if checkpoint_path.is_file():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        metrics, loss_log, elapsed = state["metrics"], state["train_loss"], state["elapsed"]
        log.info("resuming %s after epoch %d", directory.name, len(metrics))
    else:
        log.info("starting %s on %s: %d train / %d test images, %d steps per epoch",
                 directory.name, device, len(train_y), len(test_y), len(train))

    diverged: Optional[dict[str, int]] = None
    for epoch in range(len(metrics) + 1, cfg.trainer.epochs + 1):
        epoch_start = time.perf_counter()
        record, losses, diverged = train_epoch(cfg, model, optimizer, scheduler, train, epoch)
        eval_start = time.perf_counter()
        record["test_loss"], record["test_acc"] = evaluate(model, test) if diverged is None else (None, None)
        record["eval_seconds"] = time.perf_counter() - eval_start
        record["seconds"] = record["train_seconds"] + record["eval_seconds"]
        metrics.append(record)
        loss_log.extend(losses)
        log.info(
            "epoch %d/%d | train loss %.4f acc %.2f%% | test loss %s acc %s | lr %.5f | %.1f s | %.0f img/s",
            epoch, cfg.trainer.epochs, record["train_loss"], record["train_acc"], _fmt(record["test_loss"], "{:.4f}"),
            _fmt(record["test_acc"], "{:.2f}%"), record["lr"], record["seconds"], record["images_per_s"],
        )
        atomic.write_jsonl(directory / records.METRICS, metrics)
        atomic.write_jsonl(directory / records.TRAIN_LOSS, loss_log)
        elapsed += time.perf_counter() - epoch_start  # training, evaluation and writing the records
        if diverged is not None:
            log.warning("training diverged at epoch %d step %d (non-finite loss); stopping", epoch, diverged["step"])
            break
        atomic.torch_save(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "metrics": metrics, "train_loss": loss_log, "elapsed": elapsed,
        })

    summary = atomic.finite(_summary(cfg, metrics, elapsed, diverged, device, data.source, data.fingerprint, directory))
    atomic.write_json(directory / records.SUMMARY, summary)
    return summary


def train_epoch(
    cfg: DictConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatches,
    epoch: int,
) -> tuple[dict[str, Any], list[dict[str, Any]], Optional[dict[str, int]]]:
    """One pass over the training split; the loss and accuracy accumulate on the device."""
    model.train()
    device = train.images.device
    every = cfg.trainer.log_every
    loss_sum = torch.zeros((), device=device)
    window = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    losses: list[dict[str, Any]] = []
    diverged = None
    steps = len(train)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, unit="step",
               disable=not (cfg.trainer.progress and sys.stderr.isatty()))
    start = time.perf_counter()
    for step, (x, y) in enumerate(train.epoch(epoch), start=1):
        out = model(x)
        loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss = loss.detach()
        loss_sum += loss
        window += loss
        correct += (out.argmax(1) == y).sum()
        if step % every == 0 or step == steps:
            mean_loss = window.item() / (every if step % every == 0 else step % every)
            window.zero_()
            losses.append({"epoch": epoch, "step": (epoch - 1) * steps + step, "loss": mean_loss})
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{mean_loss:.3f}")
            if not math.isfinite(mean_loss):
                diverged = {"epoch": epoch, "step": (epoch - 1) * steps + step}
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    seen = step * train.batch_size
    record = {
        "epoch": epoch,
        "train_loss": loss_sum.item() / step,
        "train_acc": 100.0 * correct.item() / seen,
        "lr": optimizer.param_groups[0]["lr"],
        "train_seconds": seconds,
        "images_per_s": seen / seconds,
    }
    return record, losses, diverged


def _summary(
    cfg: DictConfig,
    metrics: list[dict[str, Any]],
    elapsed: float,
    diverged: Optional[dict[str, int]],
    device: torch.device,
    source: str,
    fingerprint: str,
    directory: Path,
) -> dict[str, Any]:
    final = metrics[-1]
    best = max(metrics, key=lambda m: m["test_acc"] or 0.0)
    train_seconds = sum(m["train_seconds"] for m in metrics)
    images = sum(m["images_per_s"] * m["train_seconds"] for m in metrics)
    return {
        "run": directory.name,
        "status": "diverged" if diverged else "finished",
        "diverged": diverged is not None,
        "diverged_at": diverged,
        "norm": norm_tag(cfg.norm),
        "norm_name": cfg.norm.name,
        "groups": cfg.norm.get("groups"),
        "channels_per_group": cfg.norm.get("channels_per_group"),
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "depth": cfg.model.depth,
        "base_width": cfg.model.base_width,
        "epochs": cfg.trainer.epochs,
        "epochs_done": len(metrics),
        "lr": scaled_lr(cfg.optim, cfg.data.batch_size),
        "train_subset": cfg.data.train_subset,
        "final_test_acc": final["test_acc"],
        "final_test_loss": final["test_loss"],
        "final_train_loss": final["train_loss"],
        "best_test_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "epochs_to_acc": epochs_to_reach(metrics, list(cfg.trainer.accuracy_thresholds)),
        "wall_seconds": elapsed,
        "train_images_per_s": images / train_seconds if train_seconds else None,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "git_commit": git_commit(),
        "data_source": source,
        "data_fingerprint": fingerprint,
    }
