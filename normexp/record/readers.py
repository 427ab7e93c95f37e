"""What a run folder holds, read for those who did not write it (the sweep's plan, progress, report
and fit; the analysis): the runs below a results root, each run's identity, summary, per-epoch
metrics and status. Each reader raises DamagedRecord for a file that is there but damaged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from normexp.record.folder import ERROR, IDENTITY, LOG, METRICS, SUMMARY, is_claimed, read_json, read_jsonl

FINISHED, DIVERGED, FAILED, RUNNING, UNFINISHED = "finished", "diverged", "failed", "running", "unfinished"


def run_folders(root: Path) -> list[Path]:
    """The run folders directly below `root` (those holding an identity), by name."""
    return sorted(path.parent for path in root.glob(f"*/{IDENTITY}"))


def read_identity(directory: Path) -> Optional[dict[str, Any]]:
    """The run's identity (what its name's hash covers), or None if it has none."""
    return read_json(directory / IDENTITY)


def read_summary(directory: Path) -> Optional[dict[str, Any]]:
    """The summary of a run that has ended (finished or diverged), or None while it has not."""
    return read_json(directory / SUMMARY)


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    """The run's per-epoch records so far, one per epoch trained (normexp.record.epoch_row)."""
    return read_jsonl(directory / METRICS)


def where_diverged(summary: Mapping[str, Any]) -> Optional[str]:
    """Where a run's summary says it diverged, e.g. "epoch 3 step 1200"; None if it did not."""
    at = summary.get("diverged_at")
    return None if at is None else f"epoch {at.get('epoch')} step {at.get('step')}"


def status(directory: Path, summary: Optional[Mapping[str, Any]]) -> tuple[str, str]:
    """(status, reason) of a run folder with its summary (`read_summary`): finished, diverged,
    running, failed or unfinished."""
    if summary is not None:
        if summary["status"] == DIVERGED:
            return DIVERGED, f"non-finite loss at {where_diverged(summary) or 'an unrecorded step'}"
        return FINISHED, ""
    if is_claimed(directory):
        return RUNNING, "being trained now"
    error = read_json(directory / ERROR)
    if error is not None:
        return FAILED, f"{error.get('type')}: {error.get('message')} (log: {directory / LOG})"
    return UNFINISHED, "interrupted; rerun the same command to resume it"
