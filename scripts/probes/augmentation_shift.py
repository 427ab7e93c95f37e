"""Does the batch-statistics penalty come from augmentation? One trained BN run's weights evaluated
with population statistics (its running averages, eval mode) and with batch statistics (each
device's N images normalized together, as in training: bn_evaluation.evaluate_batch_statistics) on
four image sets: the test set as evaluated (centred, unpadded), the test set given the training
augmentation (zero-padded random crop and flip), and the training images the run never saw
(data.train_subset held them out), plain and augmented. If the penalty is augmentation's (the
running averages carry zero-padded crops, a test batch's statistics do not), it shrinks on
augmented images.

Run:  python scripts/probes/augmentation_shift.py RUN_DIR [RUN_DIR ...] --out results/augmentation_shift
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from probe_output import publish  # a sibling: probes run as `python scripts/probes/NAME.py`

from normexp import record
from normexp.data import EvalBatches, load_cifar10, stratified_subset
from normexp.data.loader import random_crop_flip
from normexp.nn.models import build_model
from normexp.train.bn_evaluation import evaluate_batch_statistics
from normexp.train.engine import evaluate

SEED = 0  # the augmentation's and the batch orders' seed


def image_sets(cfg, data) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The four uint8 image sets with their labels (see the module's docstring)."""
    seen = stratified_subset(data.train_labels, cfg.data.train_subset, cfg.model.num_classes)
    unseen = torch.ones(len(data.train_labels), dtype=torch.bool)
    unseen[seen] = False
    held_out = data.train_images[unseen], data.train_labels[unseen]

    def augmented(images: torch.Tensor) -> torch.Tensor:
        return random_crop_flip(images, cfg.data.crop_padding, cfg.data.flip, torch.Generator().manual_seed(SEED))

    return {"test": (data.test_images, data.test_labels),
            "test, augmented": (augmented(data.test_images), data.test_labels),
            "held-out train": held_out, "held-out train, augmented": (augmented(held_out[0]), held_out[1])}


def shift_table(directory: Path) -> pd.DataFrame:
    cfg = OmegaConf.load(directory / record.CONFIG)
    if cfg.data.train_subset is None:
        raise SystemExit(f"{directory.name} trained on every training image: no held-out images to evaluate")
    model = build_model(cfg.model, OmegaConf.to_container(cfg.norm, resolve=True))
    model.load_state_dict(torch.load(directory / record.CHECKPOINT, map_location="cpu", weights_only=False)["model"])
    data = load_cifar10(cfg.data.source, cfg.paths, False)
    rows = []
    for name, (images, labels) in image_sets(cfg, data).items():
        batches = EvalBatches(images, labels, 1000, data.mean, data.std)
        population = evaluate(model, batches)[1]
        batch = evaluate_batch_statistics(model, batches, cfg.data.batch_size, SEED)[1]
        rows.append({"run": directory.name, "images/device": cfg.data.batch_size, "images": name,
                     "n": len(labels), "population acc": population, "batch-statistics acc": batch,
                     "batch - population": batch - population})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders that kept checkpoint.pt")
    parser.add_argument("--out", type=Path, help="folder for shift.csv and shift.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = pd.concat([shift_table(directory) for directory in args.runs], ignore_index=True)
    publish(f"{table.to_markdown(index=False, floatfmt='.2f')}\n", table, args.out, "shift")


if __name__ == "__main__":
    main()
