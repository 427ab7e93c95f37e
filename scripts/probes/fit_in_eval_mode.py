"""Is GN's test-minus-train deficit a generalization gap? A run's recorded train accuracy is the
running accuracy of its last epoch: train mode (BN normalizes with each device's batch statistics)
on augmented images (a random crop of the image zero-padded by 4 pixels, and a random horizontal
flip). Its test accuracy is eval mode (running averages) on plain images. So "test - train" mixes
BN's batch-versus-population statistics, the augmentation, and generalization. This probe
evaluates each finished run's final weights (its checkpoint) in eval mode on every training image
and every test image, plain and with each part of the augmentation drawn once (seeded); the plain
test accuracy must match the run's recorded final one. Test minus train under the same transform
is generalization alone; plain against augmented shows what the augmentation's images do to each
norm; and crops whose border mirrors the image instead of being black separate the shift itself
from the zero padding (GN normalizes each image over its own pixels, black border included).

Run:  python scripts/probes/fit_in_eval_mode.py RUN_DIR [RUN_DIR ...] --out results/converged/fit_eval_mode [--jobs 2]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from final_weights import SEED, load_final, probe_runs  # a sibling
from omegaconf import DictConfig

from normexp.data.loader import random_crop_flip
from normexp.train.engine import evaluate


def transforms(cfg: DictConfig) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The image transforms evaluated: none, the training augmentation's parts (its crop pads with
    zeros), and the same crops padded by mirroring the border instead, each drawn with SEED."""
    def draw(padding: int, flip: bool, fill: str = "zeros") -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda images: random_crop_flip(images, padding, flip, torch.Generator().manual_seed(SEED), fill)
    pad = cfg.data.crop_padding
    return {"plain": lambda images: images, "flip": draw(0, True), "crop": draw(pad, False),
            "crop, mirrored border": draw(pad, False, "reflect"), "crop+flip": draw(pad, cfg.data.flip)}


def fit_row(directory: Path) -> dict[str, object]:
    """One run's accuracies (%): recorded (train mode on augmented images), and in eval mode on each
    split under each transform."""
    run = load_final(directory)
    last = json.loads((directory / "metrics.jsonl").read_text().splitlines()[-1])  # the final epoch's record
    row = run.columns() | {"train, crop+flip (recorded, train mode)": last["train_acc"]}
    for split, images, labels in (("train", run.data.train_images, run.data.train_labels),
                                  ("test", run.data.test_images, run.data.test_labels)):
        for name, transform in transforms(run.cfg).items():
            row[f"{split}, {name}"] = evaluate(run.model, run.batches(transform(images), labels))[1]
    run.check(row["test, plain"])  # type: ignore[arg-type]
    return row


def main() -> None:
    probe_runs(__doc__, fit_row, "fit")


if __name__ == "__main__":
    main()
