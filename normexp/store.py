"""Collect run records under a results folder into pandas tables.

`runs`: one row per run directory (config columns, summary metrics, `status`);
`epochs`: one row per run and epoch; `train_loss`: one row per logged step.
Statuses: finished, diverged, failed (error.json), running (locked by a live process),
unfinished (interrupted; rerun the same command to resume). Only finished runs enter statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from normexp import records
from normexp.norms import norm_tag

KEY_COLUMNS = ["norm", "batch_size", "seed"]


@dataclass
class RunTables:
    runs: pd.DataFrame
    epochs: pd.DataFrame
    train_loss: pd.DataFrame

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "finished"]

    @property
    def excluded(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] != "finished"]


def _config_columns(config: dict[str, Any]) -> dict[str, Any]:
    norm = config.get("norm", {})
    return {
        "norm": norm_tag(norm),
        "norm_name": norm.get("name"),
        "groups": norm.get("groups"),
        "channels_per_group": norm.get("channels_per_group"),
        "batch_size": config["data"]["batch_size"],
        "seed": config["seed"],
        "depth": config["model"]["depth"],
        "base_width": config["model"]["base_width"],
        "epochs": config["trainer"]["epochs"],
        "train_subset": config["data"]["train_subset"],
    }


def _status(directory: Path, summary: dict[str, Any] | None) -> tuple[str, str]:
    if summary is not None:
        if summary.get("diverged"):
            at = summary.get("diverged_at") or {}
            return "diverged", f"non-finite loss at epoch {at.get('epoch')} step {at.get('step')}"
        return "finished", ""
    if records.is_claimed(directory):
        return "running", "being trained now"
    error = records.read_json(directory / records.ERROR)
    if error is not None:
        return "failed", f"{error.get('type')}: {error.get('message')} (log: {directory / records.LOG})"
    return "unfinished", "interrupted; rerun the same command to resume it"


def load_runs(root: Path) -> RunTables:
    """Read every run directory (a folder holding config.yaml and train.log) below `root`."""
    rows, epoch_rows, loss_rows = [], [], []
    for config_path in sorted(Path(root).rglob(records.CONFIG)):
        directory = config_path.parent
        hidden = any(part.startswith(".") for part in directory.relative_to(root).parts)
        if hidden or not (directory / records.LOG).is_file():
            continue
        try:
            config = yaml.safe_load(config_path.read_text())
            columns = _config_columns(config)
        except (yaml.YAMLError, KeyError, TypeError, AttributeError):
            continue  # not a run record
        summary = records.read_json(directory / records.SUMMARY)
        status, reason = _status(directory, summary)
        metrics = records.read_jsonl(directory / records.METRICS)
        row = {"run": directory.name, "path": str(directory), **columns, "status": status, "reason": reason,
               "epochs_done": len(metrics)}
        if summary is not None:
            row.update({k: v for k, v in summary.items() if k not in row and not isinstance(v, dict)})
            row.update({f"epochs_to_{k}": v for k, v in (summary.get("epochs_to_acc") or {}).items()})
        rows.append(row)
        tag = {"run": directory.name, **{k: columns[k] for k in KEY_COLUMNS}, "status": status}
        epoch_rows += [{**tag, **m} for m in metrics]
        loss_rows += [{**tag, **m} for m in records.read_jsonl(directory / records.TRAIN_LOSS)]
    runs = pd.DataFrame(rows, columns=None if rows else ["run", "path", *KEY_COLUMNS, "status", "reason"])
    return RunTables(runs=runs, epochs=pd.DataFrame(epoch_rows), train_loss=pd.DataFrame(loss_rows))
