"""The training and evaluation passes: tensors in, numbers out, no files.

A step trains every member of a `Pack` at once; losses and accuracies stay on the device and are
read every `log_every` steps, which is also where divergence (a non-finite loss) is caught.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from normexp.data import EvalBatches, TrainBatches
from normexp.packing import Pack, member_state
from normexp.progress import StepProgress
from normexp.precise_bn import recompute_batchnorm_statistics


@dataclass
class EpochResult:
    """Per member: the epoch's record, its logged losses, and where it diverged (None if it did not)."""

    records: list[dict[str, Any]]
    losses: list[list[dict[str, Any]]]
    diverged: list[Optional[dict[str, int]]] = field(default_factory=list)


def train_epoch(
    pack: Pack,
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatches,
    epoch: int,
    log_every: int,
    epochs: int,
    progress: Optional[StepProgress] = None,
) -> EpochResult:
    """One pass over the training split; `forward` is the pack's model, maybe compiled. Each record's
    `lr` is the rate of the epoch's first step (the rate the epoch started training with)."""
    pack.model.train()
    k, device, steps = pack.size, train.images.device, train.steps
    loss_sum = torch.zeros(k, device=device)
    window = torch.zeros(k, device=device)
    correct = torch.zeros(k, device=device, dtype=torch.int64)
    losses: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    diverged: list[Optional[dict[str, int]]] = [None] * k
    lr = optimizer.param_groups[0]["lr"]
    progress = progress or StepProgress(label="")
    progress.start(epoch, epochs, steps)
    start = time.perf_counter()
    for step, (x, y) in enumerate(train.epoch(epoch), start=1):
        loss, hits = pack.losses(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        scheduler.step()
        loss = loss.detach()
        loss_sum += loss
        window += loss
        correct += hits
        if step % log_every == 0 or step == steps:
            means = (window / (log_every if step % log_every == 0 else step % log_every)).tolist()
            window.zero_()
            global_step = (epoch - 1) * steps + step
            for i, mean in enumerate(means):
                losses[i].append({"epoch": epoch, "step": global_step, "loss": mean})
                if diverged[i] is None and not math.isfinite(mean):
                    diverged[i] = {"epoch": epoch, "step": global_step}
            progress.update(step, steps, train.batch_size, means)
            if all(d is not None for d in diverged):
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    progress.close()
    seen = step * train.batch_size
    records = [
        {"epoch": epoch, "train_loss": total / step, "train_acc": 100.0 * hits / seen, "lr": lr,
         "train_seconds": seconds, "images_per_s": seen / seconds}
        for total, hits in zip(loss_sum.tolist(), correct.tolist())
    ]
    return EpochResult(records, losses, diverged)


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
    return loss_sum.item() / batches.images, 100.0 * correct.item() / batches.images


def evaluate_members(pack: Pack, members: list[nn.Module], batches: EvalBatches,
                     precise_bn: Optional[tuple[TrainBatches, int, int]] = None) -> list[tuple[float, float]]:
    """Each member's test loss and accuracy; packed members are evaluated one by one as single
    models (large-batch inference runs faster ungrouped). With `precise_bn` = (training batches,
    epoch, batches), a copy of the model is evaluated whose BatchNorm statistics were recomputed
    over that many training batches, each normalized as one batch (no per-device split); the
    training model's running averages stay as they are."""
    model = pack.model
    if precise_bn is not None:
        train, epoch, count = precise_bn
        model = copy.deepcopy(pack.model)
        for module in model.modules():
            if hasattr(module, "devices"):
                module.devices = 1
        recompute_batchnorm_statistics(model, (x for x, _ in train.epoch(epoch)), min(count, train.steps))
    if pack.size == 1:
        return [evaluate(model, batches)]
    results = []
    state = model.state_dict()
    for i, member in enumerate(members):
        member.load_state_dict(member_state(state, pack.size, i))
        results.append(evaluate(member, batches))
    return results
