"""Batches from a split held as one uint8 tensor on the run's device (airbench style).

Each epoch is shuffled and augmented as a whole with tensor ops (random crop of a padded image,
horizontal flip, normalization), then cut into batches as views: no per-sample Python and no
DataLoader in the hot loop. Randomness comes from a generator seeded by (seed, epoch), so any
epoch can be replayed exactly, which is what makes resuming from a checkpoint exact.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normexp.config import CROP_FILLS


def member_views(x: Tensor, y: Tensor, members: int) -> list[tuple[Tensor, Tensor]]:
    """Each member's images (B, C, H, W) and labels (B,) as views of the packed input x (B, K*C, H, W)
    (members side by side in the channel dimension) and labels y (B, K): writing them fills x and y
    (normexp.nn.packing trains the members as one model on it)."""
    return list(zip(x.unflatten(1, (members, -1)).unbind(1), y.unbind(1), strict=True))


def stratified_subset(labels: Tensor, size: int, num_classes: int, seed: int = 0) -> Tensor:
    """Indices of `size` samples with classes as equal as possible, chosen by a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    per_class = [size // num_classes + (c < size % num_classes) for c in range(num_classes)]
    chosen = []
    for c, count in enumerate(per_class):
        members = torch.nonzero(labels == c).flatten()
        if count > members.numel():
            raise ValueError(f"subset of {size} needs {count} images of class {c}; the split has {members.numel()}")
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    return torch.cat(chosen).sort().values


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float32 standardized with per-channel mean/std (0..1 scale)."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return images.float().mul_(scale).sub_(shift)


def pad(images: Tensor, padding: int, fill: str, mean: Optional[Tensor] = None) -> Tensor:
    """uint8 images (N, C, H, W) padded by `padding` on every side, the border filled as `fill` says:
    black, the mirrored border, or each channel's `mean` (0..1 scale) rounded to uint8, the colour that
    normalization maps to about zero."""
    if fill == "zeros":
        return F.pad(images, (padding,) * 4)
    if fill == "reflect":
        return F.pad(images, (padding,) * 4, mode="reflect")
    if fill != "mean" or mean is None:
        raise ValueError(f"crop fill {fill!r} (allowed: {', '.join(CROP_FILLS)}; 'mean' needs the mean colour)")
    n, c, h, w = images.shape
    colour = (mean * 255).round().to(images.dtype, copy=False).to(images.device)
    padded = colour.view(1, c, 1, 1).expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = images
    return padded


def random_crop_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator,
                     fill: str = "zeros", mean: Optional[Tensor] = None) -> Tensor:
    """Per-sample random crop and horizontal flip of a whole uint8 batch; the crop's padding is filled
    as `fill` says (see `pad`)."""
    n, _, h, w = images.shape
    out = images
    if padding:
        padded = pad(images, padding, fill, mean)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[batch, channel, rows, cols]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


class TrainBatches:
    """Shuffled, augmented, normalized training batches; the last incomplete batch is dropped.

    With several seeds (packed runs, see `normexp.nn.packing`) each seed gets its own order and
    augmentation, exactly as it would alone, joined in the packed layout: x is (B, K*3, H, W) and
    y is (B, K) for K seeds. `batch_size` is the images per optimizer step.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        seeds: Sequence[int],
        padding: int = 4,
        flip: bool = True,
        crop_fill: str = "zeros",
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.seeds, self.padding, self.flip = batch_size, list(seeds), padding, flip
        self.crop_fill = crop_fill
        self.mean, self.std = mean.to(images.device), std.to(images.device)
        self.memory_format = memory_format

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (the last incomplete batch is dropped)."""
        return self.images.shape[0] // self.batch_size

    def _one_seed(self, seed: int, epoch: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(self.images.shape[0], generator=generator).to(self.images.device)
        images = random_crop_flip(self.images[order], self.padding, self.flip, generator, self.crop_fill, self.mean)
        return normalize(images, self.mean, self.std), self.labels[order]

    def epoch(self, epoch: int, steps: Optional[int] = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The epoch's batches in order, made now (the fill is done when this returns); only its
        first `steps` (null: all) are made."""
        x, y = self.buffers(steps)
        self.fill(epoch, x, y)
        return zip(x.split(self.batch_size), y.split(self.batch_size))

    def buffers(self, steps: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Empty tensors that hold an epoch's first `steps` batches (null: all), for `fill`."""
        n = (self.steps if steps is None else min(steps, self.steps)) * self.batch_size
        _, c, h, w = self.images.shape
        x = torch.empty(n, c * len(self.seeds), h, w, dtype=torch.float32, device=self.images.device,
                        memory_format=self.memory_format)
        return x, torch.empty(n, len(self.seeds), dtype=self.labels.dtype, device=self.images.device)

    def fill(self, epoch: int, x: Tensor, y: Tensor) -> None:
        """Write the epoch's first batches, in order, into `buffers()` in place, one seed at a time (so one
        seed's temporaries are alive at once; the addresses stay: what a captured step reads)."""
        for (member_x, member_y), seed in zip(member_views(x, y, len(self.seeds)), self.seeds):
            images, labels = self._one_seed(seed, epoch)
            member_x.copy_(images[: x.shape[0]])
            member_y.copy_(labels[: y.shape[0]])
            del images, labels  # before the next seed's


class EvalBatches:
    """The test split, normalized once, in fixed order and large batches."""

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        mean: Tensor,
        std: Tensor,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.x = normalize(images, mean.to(images.device),
                           std.to(images.device)).contiguous(memory_format=memory_format)
        self.y = labels
        self.batch_size = batch_size

    @property
    def images(self) -> int:
        return self.x.shape[0]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return zip(self.x.split(self.batch_size), self.y.split(self.batch_size))


def maybe_subset(images: Tensor, labels: Tensor, size: Optional[int], num_classes: int) -> tuple[Tensor, Tensor]:
    if size is None or size >= labels.numel():
        return images, labels
    index = stratified_subset(labels, size, num_classes)
    return images[index], labels[index]
