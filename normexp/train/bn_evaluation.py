"""Batch-dependent norms (BN, BRN) evaluated three ways on the same weights, and FrozenBN's switch
(Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm").

- population statistics: eval mode with the running averages (engine.evaluate);
- precise population statistics: a copy whose running statistics are recomputed on these weights
  (precise_bn.population_statistics) over a few thousand training images at the run's own step
  batch, per-device normalization upstream as in training;
- batch statistics ("train-mode eval"): test batches of the run's N images per device, each
  normalized by its own statistics, in an order seeded by the run's seed, no running updates.
`EvaluationPlan` holds which of these a run makes, and when.
A run whose population accuracy is far below its batch-statistics accuracy suffers from the
train/test inconsistency of its statistics, not from noisy training.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from normexp.data import EvalBatches, TrainBatches
from normexp.nn.devices import split_batch_statistics
from normexp.nn.precise_bn import batch_norm_layers, population_statistics, recompute_batchnorm_statistics
from normexp.nn.traits import traits_of


@dataclass(frozen=True)
class StatisticsDraw:
    """Training images for population statistics: `steps` batches of `train` (the run's step batch),
    in the order of the epoch `apply` is given (one past every training epoch, so that training's
    own orders are untouched)."""

    train: TrainBatches
    steps: int

    @classmethod
    def of(cls, train: TrainBatches, images: int) -> StatisticsDraw:
        return cls(train, min(train.steps, math.ceil(images / train.batch_size)))

    def apply(self, model: nn.Module, epoch: int) -> None:
        """Set `model`'s BN statistics (in place) to the population statistics of this draw."""
        population_statistics(model, (x for x, _ in self.train.epoch(epoch, self.steps)), self.steps)


def precise_copy(model: nn.Module, draw: StatisticsDraw, epoch: int) -> nn.Module:
    """A copy of `model` with precise population statistics; `model` is untouched."""
    precise = copy.deepcopy(model)
    draw.apply(precise, epoch)
    return precise


@torch.no_grad()
def evaluate_batch_statistics(model: nn.Module, batches: EvalBatches, per_device: int,
                              seed: int) -> tuple[float, float]:
    """Test loss and accuracy (%) of a single (unpacked) model in train mode, every `per_device`
    test images normalized together by their own statistics (Batch Renorm without its correction
    to the running ones), in an order seeded by `seed`, the last group filled up from the order's
    start, whose repeated predictions are not counted; `model` is untouched."""
    model = copy.deepcopy(model)
    for layer in batch_norm_layers(model):
        cast(Any, layer).momentum = 0.0  # running statistics unchanged
        if traits_of(layer).corrects_statistics:  # its own batch statistics, not renormalized
            cast(Any, layer).batch_statistics_only()  # the layer's own method (duck-typed)
    model.train()
    n, device = batches.images, batches.x.device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    order = order.repeat(math.ceil(per_device / n) + 1)[: math.ceil(n / per_device) * per_device]
    chunk = max(1, batches.batch_size // per_device) * per_device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, order.numel(), chunk):
        index = order[start:start + chunk]
        split_batch_statistics(model, index.numel() // per_device)
        counted = slice(0, max(0, min(index.numel(), n - start)))
        out = model(batches.x[index])[counted]
        y = batches.y[index][counted]
        loss_sum += F.cross_entropy(out, y, reduction="sum").double()
        correct += (out.argmax(1) == y).sum()
    return loss_sum.item() / n, 100.0 * correct.item() / n


def freeze_batch_statistics(model: nn.Module) -> None:
    """FrozenBN: after `model.train()`, every BN-type layer normalizes with its running statistics
    (eval mode: no batch statistics, no running updates) while its affine weights keep learning."""
    for layer in batch_norm_layers(model):
        layer.eval()


@dataclass(frozen=True)
class LegacyPrecise:
    """The committed `bn-pbn` runs' precise BN (norm=bn_precise, norm.precise_bn_*): `test_*`
    itself evaluated on a copy whose BN statistics are recomputed over `batches` batches of `train`
    (the training set at their own batch size), each normalized as one batch (no per-device split)."""

    train: TrainBatches
    batches: int

    @classmethod
    def of(cls, norm: Mapping[str, Any], train: TrainBatches) -> Optional[LegacyPrecise]:
        """The norm's legacy precise BN over the run's training set; None when it is off."""
        if norm.get("precise_bn_batches") is None:
            return None
        batches = TrainBatches(train.images, train.labels, norm["precise_bn_batch_size"], train.mean, train.std,
                               seeds=train.seeds, padding=train.padding, flip=train.flip,
                               crop_fill=train.crop_fill, memory_format=train.memory_format)
        return cls(batches, norm["precise_bn_batches"])

    def copy(self, model: nn.Module, epoch: int) -> nn.Module:
        """A copy of `model` with its statistics recomputed over epoch `epoch`'s batches."""
        recomputed = split_batch_statistics(copy.deepcopy(model), 1)
        recompute_batchnorm_statistics(recomputed, (x for x, _ in self.train.epoch(epoch, self.batches)),
                                       min(self.batches, self.train.steps))
        return recomputed


@dataclass(frozen=True)
class EvaluationPlan:
    """How a pack's runs are evaluated: on `test` every `every` epochs and after the last of
    `epochs`, in eval mode, and for a model with BN-type layers also with precise population
    statistics from `precise` and with batch statistics over `per_device` test images per device
    in orders seeded by `seeds` (None: off; the `evaluation` config); `legacy`: norm=bn_precise's
    recomputed statistics. Its statistics draw epochs past training's (epochs + the epoch)."""

    test: EvalBatches
    every: int
    epochs: int
    seeds: list[int]
    precise: Optional[StatisticsDraw] = None
    per_device: Optional[int] = None
    legacy: Optional[LegacyPrecise] = None

    @classmethod
    def of(cls, cfg: DictConfig, test: EvalBatches, train: TrainBatches, seeds: list[int]) -> EvaluationPlan:
        """The plan `cfg` sets (trainer.eval_every, trainer.epochs, evaluation, norm) for a pack's runs."""
        precise = cfg.evaluation.precise_images
        return cls(test, cfg.trainer.eval_every, cfg.trainer.epochs, seeds,
                   StatisticsDraw.of(train, precise) if precise else None,
                   cfg.data.batch_size if cfg.evaluation.batch_statistics else None, LegacyPrecise.of(cfg.norm, train))

    def due(self, epoch: int) -> bool:
        """Whether epoch `epoch` ends with an evaluation."""
        return epoch % self.every == 0 or epoch == self.epochs

    def draw_epoch(self, epoch: int) -> int:
        """The epoch whose order an evaluation after epoch `epoch` draws training images in."""
        return self.epochs + epoch
