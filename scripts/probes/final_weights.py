"""What the probes that evaluate finished runs' final weights share: a run loaded with its checkpoint
and data (refused unless it repeats the recorded test accuracy), the columns that name it, the mean
over seeds per norm, and the command line that evaluates runs one per process."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, cast

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from probe_output import publish  # a sibling: probes run as `python scripts/probes/NAME.py`

from normexp import record
from normexp.config import plain
from normexp.data import CifarArrays, EvalBatches, load_cifar10
from normexp.nn.models import build_model
from normexp.record.identity import norm_tag
from normexp.train.harness import prepare_model
from normexp.train.runtime import job_environment

SEED = 0  # the seed of every random image transform the probes draw
TEST_TOLERANCE = 0.05  # points: the checkpoint's test accuracy against the recorded final one
EVAL_BATCH = 1000  # images per forward pass


@dataclass(frozen=True)
class FinalRun:
    """A finished run: its folder, config, summary, final weights in a model laid out as training had
    it (in eval mode), the memory format its inputs take, and its CIFAR-10 arrays."""

    directory: Path
    cfg: DictConfig
    norm: dict[str, Any]  # the config's norm spec
    summary: dict[str, Any]
    model: torch.nn.Module
    memory_format: torch.memory_format
    data: CifarArrays

    def columns(self) -> dict[str, object]:
        """The columns that name the run in a probe's table."""
        return {"run": self.directory.name, "norm": norm_tag(self.norm),
                "images/device": self.cfg.data.batch_size, "seed": self.cfg.seed,
                "epochs": self.summary["epochs_done"]}

    def batches(self, images: torch.Tensor, labels: torch.Tensor) -> EvalBatches:
        """uint8 `images` normalized as the run's test images are, in its inputs' memory format."""
        return EvalBatches(images, labels, EVAL_BATCH, self.data.mean, self.data.std, memory_format=self.memory_format)

    def check(self, test_plain: float) -> None:
        """Refuse a checkpoint whose plain test accuracy is not the run's recorded final one."""
        if abs(test_plain - self.summary["final_test_acc"]) > TEST_TOLERANCE:
            raise SystemExit(f"{self.directory.name}: its checkpoint scores {test_plain:.2f} on the test set, the "
                             f"run recorded {self.summary['final_test_acc']:.2f}; not its final model")


def load_final(directory: Path) -> FinalRun:
    """The finished run in `directory`, from its config, summary and checkpoint."""
    cfg = OmegaConf.load(directory / record.CONFIG)
    assert isinstance(cfg, DictConfig)
    norm = plain(cfg.norm)
    model = build_model(cfg.model, norm)
    model.load_state_dict(torch.load(directory / record.CHECKPOINT, map_location="cpu", weights_only=False)["model"])
    env = job_environment(cast(DictConfig, OmegaConf.merge(cfg, {"runtime": {"device": "cpu"}})), model)
    prepare_model(model, cfg, env)
    model.eval()
    return FinalRun(directory, cfg, norm, json.loads((directory / "summary.json").read_text()), model, env.layout,
                    load_cifar10(cfg.data.source, cfg.paths, False))


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


def probe_runs(description: str, row: Callable[[Path], dict[str, object]], name: str) -> None:
    """The probe's command line: `row` of each run folder given, one process and one torch thread per
    run at a time (--jobs), published as `name` with the mean over seeds per norm."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders that kept checkpoint.pt")
    parser.add_argument("--out", type=Path, help=f"folder for {name}.csv and {name}.md")
    parser.add_argument("--jobs", type=int, default=1, help="runs evaluated at once, one torch thread each")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        table = pd.DataFrame(list(pool.map(row, args.runs)))
    publish(f"{table.to_markdown(index=False, floatfmt='.2f')}\n\nMean over seeds ({len(table)} runs):\n\n"
            f"{by_norm(table).to_markdown(floatfmt='.2f')}\n", table, args.out, name)
