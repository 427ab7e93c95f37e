"""Run directories: a name derived from the configuration, the files a run writes, a lock.

A run directory holds `config.yaml` (resolved), `metrics.jsonl` (one record per epoch),
`train_loss.jsonl` (training loss every `trainer.log_every` steps), `checkpoint.pt` (after every
epoch), `train.log`, `summary.json` once the run has finished, and `error.json` if it failed.
Every file is written atomically. The directory name depends only on settings that change the
numbers, so running the same configuration again finds its directory: finished runs are skipped,
unfinished ones resume.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, OmegaConf

from normexp.norms import norm_tag

# Settings that do not change a run's numbers: where things live, how it is shown, what runs it.
RUNTIME_FIELDS = {
    "data": ("folder", "torchvision_root", "download", "cache_dir"),
    "trainer": ("device", "threads", "progress", "eval_batch_size", "eval_every",
                "channels_last", "pack_max_batch", "compile"),
}

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
TRAIN_LOSS = "train_loss.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
LOG = "train.log"
ERROR = "error.json"
LOCK = ".lock"


def identity(cfg: DictConfig) -> dict[str, Any]:
    """The part of the resolved config that determines a run's numbers."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("results_root", None)
    for section, fields in RUNTIME_FIELDS.items():
        for name in fields:
            container.get(section, {}).pop(name, None)
    return container


def run_name(cfg: DictConfig) -> str:
    """e.g. `gn8_b4_s1_3f2a9c1e`: norm, batch size, seed, and a hash of every other setting."""
    ident = identity(cfg)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    return f"{norm_tag(cfg.norm)}_b{cfg.data.batch_size}_s{cfg.seed}_{digest}"


def run_dir(cfg: DictConfig) -> Path:
    return Path(cfg.results_root).expanduser().resolve() / run_name(cfg)


def read_json(path: Path) -> Optional[dict[str, Any]]:
    """A JSON file's content, or None if it is missing or not valid JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def remove_stale_temps(directory: Path) -> None:
    """Delete temporary files left by a writer that was killed before its rename."""
    for path in directory.glob(".*.tmp"):
        path.unlink(missing_ok=True)


@contextmanager
def claim(directory: Path) -> Iterator[bool]:
    """Hold an exclusive lock on a run directory; yields False if another process holds it.

    The lock is an OS file lock (flock), so it disappears with a crashed holder.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)


def is_claimed(directory: Path) -> bool:
    """Whether a live process holds the run directory's lock (see `claim`)."""
    lock = directory / LOCK
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
