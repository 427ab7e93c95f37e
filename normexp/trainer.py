"""Train and evaluate one configuration, writing a resumable run record."""

from __future__ import annotations

import copy
import logging
import math
import platform
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from normexp import atomic, packing, records
from normexp.config import seeds, validate
from normexp.data import CifarArrays, EvalBatches, TrainBatches, load_cifar10
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


def memory_format(cfg: DictConfig, model: nn.Module, device: torch.device) -> torch.memory_format:
    """channels_last if asked for and safe here, else the default layout.

    On CPU, oneDNN's strided 1x1 convolution computes wrong weight gradients, or corrupts memory,
    in NHWC when it has fewer input channels per group than its block of 8 (AVX2) or 16 (AVX-512)
    (uxlfoundation/oneDNN#6035), so narrow models keep NCHW there.
    """
    if not cfg.trainer.channels_last:
        return torch.contiguous_format
    if device.type == "cpu" and any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels // m.groups < 16
        for m in model.modules()
    ):
        log.info("trainer.channels_last ignored: a strided 1x1 convolution has < 16 input channels (oneDNN#6035)")
        return torch.contiguous_format
    return torch.channels_last


def compiled(cfg: DictConfig, model: nn.Module, device: torch.device) -> nn.Module:
    """What `train_epoch` calls: the model itself, or with `trainer.compile` (null = on GPUs only)
    `torch.compile`, with CUDA graphs on a GPU ("reduce-overhead"): it removes most of the per-step
    launch overhead that dominates small batches there (results/bench). On 2 CPU cores compiling did
    not pay for its compile time in a one-off probe (about +10% at batch 2 for 40 s, slower at 64)."""
    wanted = cfg.trainer.compile if cfg.trainer.compile is not None else device.type == "cuda"
    if not wanted:
        return model
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


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


def evaluate_members(model: nn.Module, group: list["Member"], batches: EvalBatches) -> list[tuple[float, float]]:
    """Each member's test loss and accuracy; packed members are evaluated one by one as single
    models (large-batch inference runs faster ungrouped)."""
    if len(group) == 1:
        return [evaluate(model, batches)]
    state = model.state_dict()
    results = []
    for i, member in enumerate(group):
        member.model.load_state_dict(packing.member_state(state, len(group), i))
        results.append(evaluate(member.model, batches))
    return results


def epochs_to_reach(metrics: list[dict[str, Any]], thresholds: list[float]) -> dict[str, Optional[int]]:
    """First epoch whose test accuracy reaches each threshold (None if never)."""
    return {
        f"{t:g}": next((m["epoch"] for m in metrics if (m["test_acc"] or 0.0) >= t), None) for t in thresholds
    }


def _fmt(value: Optional[float], pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


@contextmanager
def run_logger(directory: Path) -> Iterator[logging.Logger]:
    """A logger for one run: its lines, and the job's shared lines, go to the run's `train.log`."""
    name = f"normexp.run.{directory.name}"
    handler = logging.FileHandler(directory / records.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(lambda rec: rec.name == name or not rec.name.startswith("normexp.run."))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield logging.getLogger(name)
    finally:
        log.removeHandler(handler)
        handler.close()


@dataclass
class Member:
    """One run of a job (a job trains one run, or several packed runs that differ only in seed)."""

    cfg: DictConfig
    directory: Path
    log: logging.Logger
    model: nn.Module
    checkpoint: Optional[dict[str, Any]] = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    loss_log: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    diverged: Optional[dict[str, int]] = None
    summary: Optional[dict[str, Any]] = None


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the single run with this seed (what its directory name and record hold)."""
    run = copy.deepcopy(cfg)
    run.seed = seed
    return run


def seeded_model(cfg: DictConfig) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return build_model(cfg)


def train_run(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train the configured run, or the runs of `seed=[...]` packed as one model; return summaries.

    Each run resumes if it was interrupted and is skipped if it has finished; runs that another
    process holds are left out of the result. All settings are checked before any data is decoded
    or any step is trained.
    """
    validate(cfg)
    runs = [member_config(cfg, seed) for seed in seeds(cfg)]
    models = [seeded_model(run) for run in runs]
    summaries: list[dict[str, Any]] = []
    with ExitStack() as stack:
        members = []
        for run, model in zip(runs, models):
            directory = records.run_dir(run)
            if not stack.enter_context(records.claim(directory)):
                log.info("%s is being trained by another process; skipping it", directory)
                continue
            records.remove_stale_temps(directory)
            summary = records.read_json(directory / records.SUMMARY)
            if summary is not None:
                log.info("%s already done (%s); skipping it", directory.name, summary["status"])
                summaries.append(summary)
                continue
            members.append(Member(run, directory, stack.enter_context(run_logger(directory)), model))
        if members:
            try:
                _train(cfg, members)
            except Exception as error:
                for member in members:
                    if member.summary is None:
                        atomic.write_json(member.directory / records.ERROR, {
                            "type": type(error).__name__, "message": str(error),
                            "traceback": traceback.format_exc(),
                        })
                raise
            summaries += [m.summary for m in members]
    return summaries


def _resume(member: Member, device: torch.device) -> None:
    path = member.directory / records.CHECKPOINT
    if path.is_file():
        state = torch.load(path, map_location=device, weights_only=False)
        member.model.load_state_dict(state["model"])
        member.checkpoint = state
        member.metrics, member.loss_log, member.elapsed = state["metrics"], state["train_loss"], state["elapsed"]
        member.log.info("resuming %s after epoch %d", member.directory.name, len(member.metrics))


def _train(cfg: DictConfig, members: list[Member]) -> None:
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    device = pick_device(cfg.trainer.device)
    for member in members:
        atomic.write_text(member.directory / records.CONFIG, OmegaConf.to_yaml(member.cfg, resolve=True))
        _resume(member, device)
    # Runs are packed if the batch is small enough for packing to pay, and by the epoch they resume from.
    by_start: dict[int, list[Member]] = {}
    for member in members:
        by_start.setdefault(len(member.metrics), []).append(member)
    groups = [group for _, group in sorted(by_start.items())]
    limit = cfg.trainer.pack_max_batch
    if limit is None:  # packing wins at every batch size on a GPU, only at batch 2-4 on CPU (results/bench)
        limit = cfg.data.batch_size if device.type == "cuda" else 4
    if cfg.data.batch_size > limit:
        groups = [[member] for group in groups for member in group]
    packs = [(group, packing.pack([m.model for m in group])) for group in groups]

    data = load_cifar10(cfg.data)
    train_x, train_y = maybe_subset(data.train_images, data.train_labels, cfg.data.train_subset, cfg.model.num_classes)
    test_x, test_y = maybe_subset(data.test_images, data.test_labels, cfg.data.test_subset, cfg.model.num_classes)
    fmt = memory_format(cfg, packs[0][1], device)
    train_x, train_y = train_x.to(device), train_y.to(device)
    test = EvalBatches(test_x.to(device), test_y.to(device), cfg.trainer.eval_batch_size, data.mean, data.std,
                       memory_format=fmt)
    for group, model in packs:
        train = TrainBatches(train_x, train_y, cfg.data.batch_size, data.mean, data.std,
                             seeds=[m.cfg.seed for m in group], padding=cfg.data.crop_padding, flip=cfg.data.flip,
                             memory_format=fmt)
        for member in group:
            member.model.to(device, memory_format=fmt)
        _train_pack(cfg, group, model.to(device, memory_format=fmt), train, test, device, data)


def _train_pack(
    cfg: DictConfig,
    group: list[Member],
    model: nn.Module,
    train: TrainBatches,
    test: EvalBatches,
    device: torch.device,
    data: CifarArrays,
) -> None:
    k = len(group)
    optimizer = build_optimizer(model, cfg.optim, cfg.data.batch_size)
    scheduler = build_scheduler(optimizer, cfg.optim, len(train), cfg.trainer.epochs)
    if group[0].checkpoint is not None:
        optimizer.load_state_dict(packing.pack_optimizer_state([m.checkpoint["optimizer"] for m in group]))
        scheduler.load_state_dict(group[0].checkpoint["scheduler"])
    else:
        for member in group:
            member.log.info("starting %s on %s%s: %d train / %d test images, %d steps per epoch",
                            member.directory.name, device, f", packed with {k - 1} other seed(s)" if k > 1 else "",
                            len(train.labels), len(test), len(train))

    forward = compiled(cfg, model, device)
    for epoch in range(len(group[0].metrics) + 1, cfg.trainer.epochs + 1):
        epoch_start = time.perf_counter()
        trained, losses, diverged = train_epoch(cfg, forward, optimizer, scheduler, train, epoch)
        eval_start = time.perf_counter()
        due = epoch % cfg.trainer.eval_every == 0 or epoch == cfg.trainer.epochs or any(diverged)
        tested = evaluate_members(model, group, test) if due else [(None, None)] * k
        eval_seconds = time.perf_counter() - eval_start
        active = [(i, m) for i, m in enumerate(group) if m.diverged is None]
        for i, member in active:
            record = dict(trained[i], eval_seconds=eval_seconds, pack_size=k)
            record["test_loss"], record["test_acc"] = tested[i] if diverged[i] is None else (None, None)
            record["seconds"] = record["train_seconds"] + eval_seconds
            member.metrics.append(record)
            member.loss_log.extend(losses[i])
            member.log.info(
                "epoch %d/%d | train loss %.4f acc %.2f%% | test loss %s acc %s | lr %.5f | %.1f s | %.0f img/s",
                epoch, cfg.trainer.epochs, record["train_loss"], record["train_acc"],
                _fmt(record["test_loss"], "{:.4f}"), _fmt(record["test_acc"], "{:.2f}%"), record["lr"],
                record["seconds"], record["images_per_s"],
            )
            atomic.write_jsonl(member.directory / records.METRICS, member.metrics)
            atomic.write_jsonl(member.directory / records.TRAIN_LOSS, member.loss_log)
            if diverged[i] is not None:
                member.diverged = diverged[i]
                member.log.warning("training diverged at epoch %d step %d (non-finite loss); stopping",
                                   epoch, diverged[i]["step"])
        spent = time.perf_counter() - epoch_start  # training, evaluation and records: the pack's wall time
        state, optimizer_state = model.state_dict(), optimizer.state_dict()
        for i, member in active:
            member.elapsed += spent
            if member.diverged is None:
                atomic.torch_save(member.directory / records.CHECKPOINT, {
                    "model": packing.member_state(state, k, i),
                    "optimizer": packing.member_optimizer_state(optimizer_state, k, i),
                    "scheduler": scheduler.state_dict(), "metrics": member.metrics,
                    "train_loss": member.loss_log, "elapsed": member.elapsed,
                })
        if all(m.diverged is not None for m in group):
            break

    for member in group:
        member.summary = atomic.finite(_summary(member, k, device, data.source, data.fingerprint))
        atomic.write_json(member.directory / records.SUMMARY, member.summary)


def train_epoch(
    cfg: DictConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatches,
    epoch: int,
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], list[Optional[dict[str, int]]]]:
    """One pass over the training split for every packed member; losses and accuracies stay on the
    device and are read every `trainer.log_every` steps. Returns per member: the epoch's record,
    its logged losses, and where it diverged (None if it did not)."""
    model.train()
    k = len(train.seeds)
    device = train.images.device
    every = cfg.trainer.log_every
    loss_sum = torch.zeros(k, device=device)
    window = torch.zeros(k, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.int64)
    losses: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    diverged: list[Optional[dict[str, int]]] = [None] * k
    steps = len(train)
    bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, unit="step",
               disable=not (cfg.trainer.progress and sys.stderr.isatty()))
    start = time.perf_counter()
    for step, (x, y) in enumerate(train.epoch(epoch), start=1):
        out = model(x).view(x.shape[0], k, -1)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(-1, k).mean(0)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        scheduler.step()
        loss = loss.detach()
        loss_sum += loss
        window += loss
        correct += (out.argmax(-1) == y).sum(0)
        if step % every == 0 or step == steps:
            means = (window / (every if step % every == 0 else step % every)).tolist()
            window.zero_()
            global_step = (epoch - 1) * steps + step
            for i, mean in enumerate(means):
                losses[i].append({"epoch": epoch, "step": global_step, "loss": mean})
                if diverged[i] is None and not math.isfinite(mean):
                    diverged[i] = {"epoch": epoch, "step": global_step}
            bar.update(step - bar.n)
            bar.set_postfix(loss=" ".join(f"{m:.3f}" for m in means))
            if all(d is not None for d in diverged):
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    bar.close()
    seen = step * train.batch_size
    lr = optimizer.param_groups[0]["lr"]
    records_ = [
        {"epoch": epoch, "train_loss": total / step, "train_acc": 100.0 * hits / seen, "lr": lr,
         "train_seconds": seconds, "images_per_s": seen / seconds}
        for total, hits in zip(loss_sum.tolist(), correct.tolist())
    ]
    return records_, losses, diverged


def _summary(member: Member, pack_size: int, device: torch.device, source: str, fingerprint: str) -> dict[str, Any]:
    cfg, metrics, diverged = member.cfg, member.metrics, member.diverged
    final = metrics[-1]
    best = max(metrics, key=lambda m: m["test_acc"] or 0.0)
    train_seconds = sum(m["train_seconds"] for m in metrics)
    images = sum(m["images_per_s"] * m["train_seconds"] for m in metrics)
    return {
        "run": member.directory.name,
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
        "wall_seconds": member.elapsed,
        "pack_size": pack_size,
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
