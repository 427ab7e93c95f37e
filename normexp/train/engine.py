"""The training and evaluation passes: tensors in, numbers out, no files.

A step (normexp.train.step) trains every member of a `Pack` at once; losses and accuracies stay on
the device and are read every `log_every` steps, which is also where divergence (a non-finite loss)
is caught.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from normexp.data import EvalBatches, TrainBatches
from normexp.nn.packing import Pack, member_state
from normexp.nn.precise_bn import batch_norm_layers
from normexp.train.bn_evaluation import EvaluationPlan, evaluate_batch_statistics, freeze_batch_statistics, precise_copy
from normexp.train.progress import StepProgress
from normexp.train.step import DeviceStep, EagerStep

TrainStep = EagerStep | DeviceStep


@dataclass
class EpochResult:
    """Per member: the epoch's record, its logged losses, and where it diverged (None if it did not)."""

    records: list[dict[str, Any]]
    losses: list[list[dict[str, Any]]]
    diverged: list[Optional[dict[str, int]]] = field(default_factory=list)


class LoopTimer:
    """Seconds of the work queued on the current stream from its creation to `stop()`: CUDA events
    on a GPU (the stream is synchronized first, so that work queued before is done and not counted;
    `stop` waits for this stream only, not other jobs'), the wall clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.current_stream().synchronize()
            self.begin, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.begin.record()
        self.start = time.perf_counter()

    def stop(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self.start
        self.end.record()
        self.end.synchronize()
        return self.begin.elapsed_time(self.end) / 1000


def train_epoch(
    pack: Pack,
    step: TrainStep,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: TrainBatches,
    epoch: int,
    log_every: int,
    epochs: int,
    progress: Optional[StepProgress] = None,
    frozen: bool = False,
) -> EpochResult:
    """One pass over the training split by `step` (normexp.train.step). Each record's `lr` is the
    rate of the epoch's first step (the rate the epoch started training with); with a CUDA graph
    recorded in the epoch, `capture_seconds` is the time its warm-up and capture took, and
    `images_per_s` is the rate of the steps after them; with a compiled forward compiling in the
    epoch, `compile_seconds` is the time of the steps that compiled it (within `capture_seconds`
    when captured; step.Compilation). `fill_seconds` is the epoch's augmentation
    fill and `loop_seconds` the step loop alone (timed with CUDA events on a GPU). `frozen`:
    BN-type layers normalize with their running statistics (FrozenBN)."""
    pack.model.train()
    if frozen:
        freeze_batch_statistics(pack.model)
    device, steps = train.images.device, train.steps
    losses: list[list[dict[str, Any]]] = [[] for _ in range(pack.size)]
    diverged: list[Optional[dict[str, int]]] = [None] * pack.size
    lr = scheduler.optimizer.param_groups[0]["lr"]
    progress = progress or StepProgress(label="")
    progress.start(epoch, epochs, steps)
    start = time.perf_counter()
    step.start_epoch(train, epoch, frozen)
    loop = LoopTimer(device)  # on a GPU, once the fill is done
    fill = loop.start - start
    totals = step.totals
    for done in range(1, steps + 1):
        step()
        scheduler.step()
        if done % log_every == 0 or done == steps:
            means = (totals.window / (log_every if done % log_every == 0 else done % log_every)).tolist()
            totals.window.zero_()
            global_step = (epoch - 1) * steps + done
            for i, mean in enumerate(means):
                losses[i].append({"epoch": epoch, "step": global_step, "loss": mean})
                if diverged[i] is None and not math.isfinite(mean):
                    diverged[i] = {"epoch": epoch, "step": global_step}
            progress.update(done, steps, train.batch_size, means)
            if all(where is not None for where in diverged):
                break
    loop_seconds = loop.stop()
    seconds = time.perf_counter() - start
    progress.close()
    seen = done * train.batch_size
    setup, setup_steps = step.capture_seconds, step.capture_steps  # a graph's warm-up and capture
    compiling = step.compilation.seconds
    steady = (done - setup_steps) * train.batch_size / (seconds - setup) if done > setup_steps else seen / seconds
    records = [
        {"epoch": epoch, "train_loss": total / done, "train_acc": 100.0 * hits / seen, "lr": lr,
         "train_seconds": seconds, "images_per_s": steady, "fill_seconds": fill, "loop_seconds": loop_seconds,
         **({"capture_seconds": setup} if setup else {}), **({"compile_seconds": compiling} if compiling else {})}
        for total, hits in zip(totals.loss.tolist(), totals.correct.tolist())
    ]
    return EpochResult(records, losses, diverged)


@torch.no_grad()
def evaluate(model: nn.Module, batches: EvalBatches) -> tuple[float, float]:
    """Test loss and accuracy (%) in eval mode (BN uses its running statistics); every module's
    mode is restored afterwards (a FrozenBN layer stays frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    loss_sum = torch.zeros((), device=batches.x.device)
    correct = torch.zeros((), device=batches.x.device, dtype=torch.int64)
    for x, y in batches:
        out = model(x)
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    for module, training in modes:
        module.training = training
    return loss_sum.item() / batches.images, 100.0 * correct.item() / batches.images


def _each_member(pack: Pack, model: nn.Module, members: list[nn.Module]) -> Iterator[nn.Module]:
    """The members of a pack-shaped `model` as single models, one at a time (one model: itself)."""
    if pack.size == 1:
        yield model
        return
    state = model.state_dict()
    for i, member in enumerate(members):
        member.load_state_dict(member_state(state, pack.size, i))
        yield member


def evaluate_members(pack: Pack, members: list[nn.Module], plan: EvaluationPlan, epoch: int,
                     frozen: bool = False) -> list[dict[str, float]]:
    """Each member's test loss and accuracy (`test_loss`, `test_acc`) after epoch `epoch`, as `plan`
    says: for a model with BN-type layers also with precise population statistics (`*_precise`;
    left out when `frozen`: after FrozenBN's switch the weights no longer train under batch
    statistics upstream) and with batch statistics (`*_batch`); with its `legacy` precise BN,
    `test_*` itself on the recomputed copy. Packed members are evaluated one by one as single
    models (large-batch inference runs faster ungrouped). The training model's state stays as it is."""
    draw = plan.draw_epoch(epoch)
    model = pack.model if plan.legacy is None else plan.legacy.copy(pack.model, draw)
    rows = [dict(zip(("test_loss", "test_acc"), evaluate(member, plan.test)))
            for member in _each_member(pack, model, members)]
    if not batch_norm_layers(pack.model):
        return rows
    if plan.precise is not None and not frozen:
        precise = precise_copy(pack.model, plan.precise, draw)
        for row, member in zip(rows, _each_member(pack, precise, members)):
            row["test_loss_precise"], row["test_acc_precise"] = evaluate(member, plan.test)
    if plan.per_device is not None:
        for row, member, seed in zip(rows, _each_member(pack, pack.model, members), plan.seeds):
            row["test_loss_batch"], row["test_acc_batch"] = evaluate_batch_statistics(member, plan.test,
                                                                                      plan.per_device, seed)
    return rows
