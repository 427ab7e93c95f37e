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

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from probe_output import publish  # a sibling: probes run as `python scripts/probes/NAME.py`

from normexp import record
from normexp.data import EvalBatches, load_cifar10
from normexp.data.loader import random_crop_flip
from normexp.nn.models import build_model
from normexp.record.identity import norm_tag
from normexp.train.engine import evaluate
from normexp.train.harness import prepare_model

SEED = 0  # the one augmentation draw's seed
TEST_TOLERANCE = 0.05  # points: the checkpoint's test accuracy against the recorded final one


def transforms(cfg: DictConfig) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The image transforms evaluated: none, the training augmentation's parts (its crop pads with
    zeros), and the same crops padded by mirroring the border instead, each drawn with SEED."""
    def draw(padding: int, flip: bool, mode: str = "constant") -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda images: random_crop_flip(images, padding, flip, torch.Generator().manual_seed(SEED), mode)
    pad = cfg.data.crop_padding
    return {"plain": lambda images: images, "flip": draw(0, True), "crop": draw(pad, False),
            "crop, mirrored border": draw(pad, False, "reflect"), "crop+flip": draw(pad, cfg.data.flip)}


def final_model(directory: Path) -> tuple[DictConfig, torch.nn.Module, torch.memory_format, dict]:
    """A finished run's config, its final weights in a model laid out as training had it, the memory
    format its inputs take, and its summary."""
    cfg = OmegaConf.load(directory / record.CONFIG)
    summary = json.loads((directory / "summary.json").read_text())
    model = build_model(cfg.model, OmegaConf.to_container(cfg.norm, resolve=True))
    model.load_state_dict(torch.load(directory / record.CHECKPOINT, map_location="cpu", weights_only=False)["model"])
    return cfg, model, prepare_model(model, cfg, torch.device("cpu")), summary


def check_final(directory: Path, test_plain: float, summary: dict) -> None:
    """Refuse a checkpoint whose plain test accuracy is not the run's recorded final one."""
    if abs(test_plain - summary["final_test_acc"]) > TEST_TOLERANCE:
        raise SystemExit(f"{directory.name}: its checkpoint scores {test_plain:.2f} on the test set, the run "
                         f"recorded {summary['final_test_acc']:.2f}; the checkpoint is not the run's final model")


def run_columns(directory: Path, cfg: DictConfig, summary: dict) -> dict[str, object]:
    """The columns that name a run in a probe's table."""
    return {"run": directory.name, "norm": norm_tag(OmegaConf.to_container(cfg.norm, resolve=True)),
            "images/device": cfg.data.batch_size, "seed": cfg.seed, "epochs": summary["epochs_done"]}


def fit_row(directory: Path) -> dict[str, object]:
    """One run's accuracies (%): recorded (train mode on augmented images), and in eval mode on each
    split under each transform."""
    cfg, model, fmt, summary = final_model(directory)
    last = json.loads((directory / "metrics.jsonl").read_text().splitlines()[-1])  # the final epoch's record
    data = load_cifar10(cfg.data.source, cfg.paths, False)
    row = run_columns(directory, cfg, summary) | {"train, crop+flip (recorded, train mode)": last["train_acc"]}
    for split, images, labels in (("train", data.train_images, data.train_labels),
                                  ("test", data.test_images, data.test_labels)):
        for name, transform in transforms(cfg).items():
            batches = EvalBatches(transform(images), labels, 1000, data.mean, data.std, memory_format=fmt)
            row[f"{split}, {name}"] = evaluate(model, batches)[1]
    check_final(directory, row["test, plain"], summary)  # type: ignore[arg-type]
    return row


def by_norm(table: pd.DataFrame) -> pd.DataFrame:
    """Each image set's mean accuracy per norm over seeds, one column per norm, and with two norms
    their difference (the first minus the second)."""
    if len(table.groupby(["images/device", "epochs"])) > 1:
        raise SystemExit("give runs of one batch size and one budget: the means pool seeds only")
    means = table.groupby("norm").mean(numeric_only=True).drop(columns=["images/device", "seed", "epochs"]).T
    if len(means.columns) == 2:
        first, second = means.columns
        means[f"{first} - {second}"] = means[first] - means[second]
    return means.rename_axis("accuracy % on")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders that kept checkpoint.pt")
    parser.add_argument("--out", type=Path, help="folder for fit.csv and fit.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs evaluated at once, one torch thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        table = pd.DataFrame(list(pool.map(fit_row, args.runs)))
    publish(f"{table.to_markdown(index=False, floatfmt='.2f')}\n\nMean over seeds ({len(table)} runs):\n\n"
            f"{by_norm(table).to_markdown(floatfmt='.2f')}\n", table, args.out, "fit")


if __name__ == "__main__":
    main()
