"""A pack's epochs, one after another: each trained, evaluated when due, recorded and checkpointed
run by run, until the schedule ends or every run of the pack has diverged.

A per-epoch behaviour (FrozenBN's switch; a weight average, another evaluation) is an `EpochHook`:
`before` runs ahead of an epoch's training and may set the epoch's state (`Epoch`), `after` runs
once it is trained and evaluated and may add columns to the members' test rows. A new behaviour
is a hook class and a line in `hooks`; the loop and the conductor stay as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from normexp.config import first_frozen_epoch
from normexp.data import TrainBatches
from normexp.nn.packing import Pack
from normexp.train import run_state
from normexp.train.bn_evaluation import EvaluationPlan, StatisticsDraw
from normexp.train.engine import EpochResult, evaluate_members
from normexp.train.harness import Harness
from normexp.train.progress import StepProgress
from normexp.train.run_state import RunState

EpochListener = Callable[[str, int, bool], None]  # (run, epochs done, whether one was trained just now)


@dataclass
class Epoch:
    """The epoch under way, as hooks set it."""

    number: int  # 1-based
    frozen: Optional[bool] = None  # FrozenBN runs: BN-type layers normalize with running statistics (None: no switch)


class EpochHook:
    """A per-epoch behaviour; each method does nothing unless a hook overrides it."""

    def before(self, epoch: Epoch, pack: Pack) -> None:
        """Ahead of the epoch's training."""

    def after(self, epoch: Epoch, pack: Pack, tested: list[dict[str, Any]]) -> None:
        """Once the epoch is trained and, when due, evaluated: `tested` holds each member's test row
        (empty where not evaluated; a hook may add its own columns)."""


class FrozenSwitch(EpochHook):
    """FrozenBN (norm.freeze_after): from epoch `first` on, BN-type layers normalize with their
    running statistics, set at the switch to the precise population statistics of the weights so
    far (drawn as `draw` in the order of epoch `epochs + first - 1`: past training's own)."""

    def __init__(self, first: int, draw: StatisticsDraw, epochs: int, log: logging.Logger) -> None:
        self.first, self.draw, self.epochs, self.log = first, draw, epochs, log

    def before(self, epoch: Epoch, pack: Pack) -> None:
        if epoch.number == self.first:
            self.draw.apply(pack.model, self.epochs + epoch.number - 1)
            self.log.info("epoch %d on: BN statistics frozen at their precise population values", epoch.number)
        epoch.frozen = epoch.number >= self.first


def hooks(cfg: DictConfig, train: TrainBatches, log: logging.Logger) -> list[EpochHook]:
    """The per-epoch behaviours `cfg` asks for, in the order they run."""
    epochs = cfg.trainer.epochs
    epoch_hooks: list[EpochHook] = []
    if (first := first_frozen_epoch(cfg.norm.get("freeze_after"), epochs)) is not None:
        epoch_hooks.append(FrozenSwitch(first, StatisticsDraw.of(train, cfg.norm.freeze_images), epochs, log))
    return epoch_hooks


def train_epochs(group: list[RunState], trainer: Harness, plan: EvaluationPlan, epoch_hooks: list[EpochHook],
                 log_every: int, on_epoch: EpochListener, progress: StepProgress) -> None:
    """Train `group`'s pack (`trainer`) from the epoch its runs resume after to the schedule's end."""
    pack = trainer.pack
    for number in range(len(group[0].metrics) + 1, trainer.epochs + 1):
        start = time.perf_counter()
        epoch = Epoch(number)
        for hook in epoch_hooks:
            hook.before(epoch, pack)
        result = trainer.epoch(number, log_every, progress, bool(epoch.frozen))
        eval_start = time.perf_counter()
        tested = _tested(group, pack, result, plan, epoch)
        for hook in epoch_hooks:
            hook.after(epoch, pack, tested)
        active = [(i, run) for i, run in enumerate(group) if run.diverged is None]
        run_state.record_epochs(active, result, tested or [run_state.UNTESTED] * pack.size,
                                time.perf_counter() - eval_start, pack.size, epoch.frozen, trainer.epochs)
        run_state.checkpoint(active, pack.member_states(trainer.optimizer), trainer.scheduler.state_dict(),
                             (time.perf_counter() - start) / pack.size)  # the job's wall time, split over its runs
        for _, run in active:
            on_epoch(run.directory.name, len(run.metrics), True)
        if all(run.diverged is not None for run in group):
            break


def _tested(group: list[RunState], pack: Pack, result: EpochResult, plan: EvaluationPlan,
            epoch: Epoch) -> list[dict[str, Any]]:
    """Each member's test row when an evaluation is due and a member is still training (never NaN
    weights alone), else none."""
    alive = [run.diverged is None and diverged is None for run, diverged in zip(group, result.diverged)]
    if not (plan.due(epoch.number) and any(alive)):
        return []
    return evaluate_members(pack, [run.model for run in group], plan, epoch.number, bool(epoch.frozen))
