"""Collect the run records under a results folder into pandas DataFrames (through normexp.record).

`runs`: one row per run folder (identity columns, summary metrics, `status`, the `identity` dict,
the verdict `criteria` and `evaluation` settings its config recorded);
`epochs`: one row per run and epoch; `train_loss`: one row per logged step. Statuses: finished,
diverged, failed, running, unfinished. Only finished runs enter statistics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from normexp import record

KEY_COLUMNS = list(record.SWEPT)
# what every config.yaml a run records holds, `data` first and `seed` last (one cut short lacks some)
RECORDED_GROUPS = ("data", "model", "norm", "optim", "trainer", "runtime", "paths", "verdict", "seed")


@dataclass
class RunTables:
    runs: pd.DataFrame
    epochs: pd.DataFrame
    train_loss: pd.DataFrame

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == record.FINISHED]

    @property
    def excluded(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != record.FINISHED]


def _recorded_config(directory: Path) -> dict:
    """The run's recorded config.yaml ({} if it has none); DamagedRecord if it is there but not a mapping."""
    path = directory / record.CONFIG
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise record.DamagedRecord(path, f"not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(config, dict):
        raise record.DamagedRecord(path, "empty" if config is None else "not a YAML mapping")
    if "data" in config and (missing := [key for key in RECORDED_GROUPS if key not in config]):
        raise record.DamagedRecord(path, f"no {', '.join(missing)}: cut short")
    return config


def _evaluation(config: dict) -> str | None:
    """The run's recorded `evaluation` settings as one comparable line (None: recorded before they existed)."""
    settings = config.get("evaluation")
    return None if settings is None else ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))


def _walk(root: Path) -> list[Path]:
    """`root` and every folder below it, following symbolic links (each real folder once, so a link
    loop ends), skipping hidden folders."""
    seen, found = set(), []
    for folder, subfolders, _ in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.append(Path(folder))
    return found


def _run_folders(roots: tuple[Path, ...]) -> list[Path]:
    """Every folder holding identity.json below any of `roots` (symbolic links followed), skipping
    hidden folders, and those that a root's shared-runs list names (record.SHARED), each once."""
    folders: dict[Path, Path] = {}
    for root in map(Path, roots):
        for folder in _walk(root):
            if (folder / record.IDENTITY).is_file():
                folders.setdefault(folder.resolve(), folder)
            if (folder / record.SHARED).is_file():
                for directory in record.shared_runs(folder):
                    folders.setdefault(directory.resolve(), directory)
    return [folders[key] for key in sorted(folders)]


def median_last(metrics: list[dict], count: int = 5) -> float | None:
    """The median test accuracy of the last `count` evaluated epochs: 100 minus the GN paper's
    metric, the median of the last 5 epochs' error (fewer when fewer were evaluated)."""
    tested = [m["test_acc"] for m in metrics if m.get("test_acc") is not None][-count:]
    return float(pd.Series(tested).median()) if tested else None


def load_runs(root: Path, *more: Path) -> RunTables:
    """Read every run folder (one holding identity.json) below `root` and `more`, skipping hidden ones."""
    rows, epoch_rows, loss_rows = [], [], []
    for directory in _run_folders((root, *more)):
        ident = record.read_identity(directory)
        if ident is None:  # gone since the walk found it
            continue
        columns = record.columns(ident)
        summary = record.read_summary(directory)
        status, reason = record.status(directory, summary)
        metrics = record.read_metrics(directory)
        record.metrics_agree(directory / record.METRICS, metrics, summary)
        if (directory / record.STARTS).is_file() and not record.read_jsonl(directory / record.STARTS):
            raise record.DamagedRecord(directory / record.STARTS, "empty")  # a start writes a line; provenance reads it
        config = _recorded_config(directory)
        if "seed" in config and config["seed"] != columns["seed"]:
            raise record.DamagedRecord(directory / record.CONFIG, f"seed {config['seed']}, identity.json says "
                                                                  f"{columns['seed']}")
        row = {"run": directory.name, "path": str(directory), **columns, "status": status, "reason": reason,
               "epochs_done": len(metrics), "identity": ident, "criteria": config.get("verdict"),
               "evaluation": _evaluation(config),
               "median5_test_acc": median_last(metrics)}
        if summary is not None:
            row.update({k: v for k, v in summary.items() if k not in row and not isinstance(v, dict)})
            row["diverged_at"] = record.where_diverged(summary)
        rows.append(row)
        tag = {"run": directory.name, **{k: columns[k] for k in KEY_COLUMNS}, "status": status}
        epoch_rows += [{**tag, **m} for m in metrics]
        losses = record.read_jsonl(directory / record.TRAIN_LOSS)
        record.losses_agree(directory / record.TRAIN_LOSS, losses, metrics, summary)
        loss_rows += [{**tag, **m} for m in losses]
    rows.sort(key=lambda row: row["run"])  # by name, not by where a folder lies: the same order on any clone
    runs = pd.DataFrame(rows, columns=None if rows else ["run", "path", *KEY_COLUMNS, "status", "reason"])
    return RunTables(runs=runs, epochs=pd.DataFrame(epoch_rows), train_loss=pd.DataFrame(loss_rows))
