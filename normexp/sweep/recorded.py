"""The runs a sweep's results root already holds, for its plan: each run's epochs done, found by its
identity (normexp.record) without the data's content digest, which only loading the data gives.
Torch-free; reads each run folder's identity once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from normexp import record


def _key(ident: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ident.items() if k != "data_digest"}


def _epochs_recorded(folder: Path, epochs: int) -> int:
    """The epochs a run folder holds: all `epochs` once it has ended, else its metrics' count (a
    damaged record counts none: training names it)."""
    try:
        if record.read_summary(folder) is not None:
            return epochs
        return min(epochs, len(record.read_metrics(folder)))
    except record.DamagedRecord:
        return 0


class Recorded:
    """The run folders below each results root asked about, with their identities (read once per root)."""

    def __init__(self) -> None:
        self._roots: dict[Path, list[tuple[dict[str, Any], Path]]] = {}

    def _index(self, root: Path) -> list[tuple[dict[str, Any], Path]]:
        if root not in self._roots:
            found = []
            for folder in record.run_folders(root):
                try:
                    ident = record.read_identity(folder)
                except record.DamagedRecord:
                    continue  # training this run names it
                if ident is not None:
                    found.append((_key(ident), folder))
            self._roots[root] = found
        return self._roots[root]

    def epochs_done(self, cfg: DictConfig, seed: int) -> int:
        """The epochs already recorded of the run of `cfg` with `seed` (0: none, or no such run)."""
        run = copy.deepcopy(cfg)
        run.seed = seed
        wanted = _key(record.identity(run, ""))
        matches = [folder for ident, folder in self._index(Path(cfg.paths.results_root).expanduser())
                   if ident == wanted]
        return max((_epochs_recorded(folder, cfg.trainer.epochs) for folder in matches), default=0)
