"""Hydra callbacks: a report at the end of a sweep of what finished, failed or diverged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from normexp.store import load_runs

log = logging.getLogger("normexp")


class SweepReport(Callback):
    """After `-m`, list the runs under results_root by status, and each problem with its log."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.results_root).expanduser()
        tables = load_runs(root)
        if tables.runs.empty:
            log.warning("sweep ended with no run records under %s", root)
            return
        counts = tables.runs["status"].value_counts().to_dict()
        log.info("sweep ended; runs under %s: %s", root, ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        for _, run in tables.excluded.iterrows():
            log.warning("%s %s: %s", run["status"], run["run"], run["reason"])
