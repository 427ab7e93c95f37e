"""A run folder's files: their names, the lock that claims the folder, and the two formats its
records are read in (a JSON object, JSON lines), each read naming a damaged file (DamagedRecord)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from normexp.files import locks
from normexp.record.damage import DamagedRecord

IDENTITY = "identity.json"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TRAIN_LOSS = "train_loss.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
LOG = "train.log"
ERROR = "error.json"
LOCK = ".lock"
STARTS = "starts.jsonl"
# A results folder may list runs stored in another one instead of holding copies: one path per line,
# relative to the file's folder (e.g. ../claim/runs/bn_b2x8_s0_22895390); the analysis reads them as its own.
SHARED = "shared_runs.txt"


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON file's object, or None if it is missing; DamagedRecord if it is there but not a JSON object."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        content = json.loads(text)
    except ValueError as error:
        raise DamagedRecord(path, "empty" if not text.strip() else f"not valid JSON: {error}") from None
    if not isinstance(content, dict):
        raise DamagedRecord(path, f"not a JSON object but {type(content).__name__}")
    return content


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file's records (none if it is missing); DamagedRecord naming the first line that
    is not a JSON object."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise DamagedRecord(path, f"line {number} is not valid JSON: {error}") from None
        if not isinstance(row, dict):
            raise DamagedRecord(path, f"line {number} is not a JSON object")
        rows.append(row)
    return rows


def shared_runs(folder: Path) -> list[Path]:
    """The run folders that `folder`'s SHARED file lists (none without one); a listed folder that
    is missing raises FileNotFoundError naming it."""
    path = folder / SHARED
    if not path.is_file():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    listed = [folder / line for line in lines if line and not line.startswith("#")]
    missing = [str(p) for p in listed if not (p / IDENTITY).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lists run folders that do not exist: {', '.join(missing)}")
    return listed


def remove_stale_temps(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed before its rename."""
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


@contextmanager
def claim(directory: Path) -> Iterator[bool]:
    """Hold the run directory's lock; yields False if another process holds it (the lock goes
    with a crashed holder)."""
    with locks.exclusive(directory / LOCK, wait=False) as held:
        yield held


def is_claimed(directory: Path) -> bool:
    """Whether a live process holds the run directory's lock (see `claim`)."""
    return locks.is_held(directory / LOCK)
