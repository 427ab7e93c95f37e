"""What the probes that evaluate finished runs' final weights share: loading a run's checkpoint
into its model (refused unless it repeats the recorded test accuracy), the columns that name a run,
the mean over seeds per norm, and the command line that evaluates runs one per process."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from probe_output import publish  # a sibling: probes run as `python scripts/probes/NAME.py`

from normexp import record
from normexp.nn.models import build_model
from normexp.record.identity import norm_tag
from normexp.train.harness import prepare_model

SEED = 0  # the seed of every random image transform the probes draw
TEST_TOLERANCE = 0.05  # points: the checkpoint's test accuracy against the recorded final one


def final_model(directory: Path) -> tuple[DictConfig, torch.nn.Module, torch.memory_format, dict[str, Any]]:
    """A finished run's config, its final weights in a model laid out as training had it, the memory
    format its inputs take, and its summary."""
    cfg = OmegaConf.load(directory / record.CONFIG)
    assert isinstance(cfg, DictConfig)
    summary = json.loads((directory / "summary.json").read_text())
    model = build_model(cfg.model, OmegaConf.to_container(cfg.norm, resolve=True))
    model.load_state_dict(torch.load(directory / record.CHECKPOINT, map_location="cpu", weights_only=False)["model"])
    return cfg, model, prepare_model(model, cfg, torch.device("cpu")), summary


def check_final(directory: Path, test_plain: float, summary: dict[str, Any]) -> None:
    """Refuse a checkpoint whose plain test accuracy is not the run's recorded final one."""
    if abs(test_plain - summary["final_test_acc"]) > TEST_TOLERANCE:
        raise SystemExit(f"{directory.name}: its checkpoint scores {test_plain:.2f} on the test set, the run "
                         f"recorded {summary['final_test_acc']:.2f}; the checkpoint is not the run's final model")


def run_columns(directory: Path, cfg: DictConfig, summary: dict[str, Any]) -> dict[str, object]:
    """The columns that name a run in a probe's table."""
    return {"run": directory.name, "norm": norm_tag(OmegaConf.to_container(cfg.norm, resolve=True)),
            "images/device": cfg.data.batch_size, "seed": cfg.seed, "epochs": summary["epochs_done"]}


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
