"""A run file that is there but cannot be read (truncated, emptied, garbled): the error that names
it and what to do, and the checks that a run's files agree with each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional


class DamagedRecord(ValueError):
    """A damaged run file: its path, what is wrong with it and what to do (one line)."""

    def __init__(self, path: Path, problem: str, remedy: Optional[str] = None) -> None:
        remedy = remedy or (f"restore it from a copy of the run, or delete the run folder {path.parent} "
                            f"to train that run again")
        super().__init__(f"{path} is damaged ({problem}): {remedy}")
        self.path = path


def metrics_agree(path: Path, metrics: list[dict[str, Any]], summary: Optional[Mapping[str, Any]]) -> None:
    """Raise DamagedRecord unless an ended run's metrics (read from `path`) hold the epochs its
    summary counts."""
    if summary is not None and summary.get("epochs_done") != len(metrics):
        raise DamagedRecord(path, f"{len(metrics)} epoch(s) recorded, summary.json says "
                                  f"{summary.get('epochs_done')}")


def losses_agree(path: Path, losses: list[dict[str, Any]], metrics: list[dict[str, Any]],
                 summary: Optional[Mapping[str, Any]]) -> None:
    """Raise DamagedRecord unless the training losses (read from `path`) were logged in every epoch
    the metrics hold and, for a finished run, up to its last step (every epoch logs its last step)."""
    logged = {row.get("epoch") for row in losses}
    missing = [m.get("epoch") for m in metrics if m.get("epoch") not in logged]
    if missing:
        raise DamagedRecord(path, f"no loss logged in epoch(s) {', '.join(map(str, missing[:3]))}"
                                  f"{' ...' if len(missing) > 3 else ''} of the {len(metrics)} recorded")
    if summary is None or summary.get("status") != "finished" or not metrics:
        return
    per_epoch = max(row["step"] for row in losses if row.get("epoch") == metrics[0].get("epoch"))
    last = losses[-1].get("step")
    if last != per_epoch * len(metrics):
        raise DamagedRecord(path, f"its last line is step {last}, the run's last step was {per_epoch * len(metrics)}")
