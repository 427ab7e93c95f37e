"""Progress of long work, from its first minute: a bar per job that names its runs (in a terminal),
a line every minute inside an epoch otherwise (log files, nohup), and a sweep-level line with an
ETA as each epoch ends."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Optional

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normexp.files import atomic

log = logging.getLogger("normexp")


@dataclass
class StepProgress:
    """Within an epoch: a tqdm bar on its own line (`position`, one per parallel job) when asked
    for and attached to a terminal, else a log line at most every `every_s` seconds."""

    label: str
    bar: bool = False
    position: int = 0
    every_s: float = 60.0
    _bar: Any = field(default=None, init=False)
    _start: float = field(default=0.0, init=False)
    _last: float = field(default=0.0, init=False)
    _epoch: str = field(default="", init=False)

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._start = f"epoch {epoch}/{epochs}", time.perf_counter()
        self._last = self._start
        if self.bar and sys.stderr.isatty():
            self._bar = tqdm(total=steps, desc=f"{self.label} {self._epoch}", leave=False, unit="step",
                             position=self.position)

    def update(self, step: int, steps: int, images_per_step: int, losses: list[float]) -> None:
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=" ".join(f"{m:.3f}" for m in losses))
        elif now - self._last >= self.every_s:
            self._last = now
            rate = step / (now - self._start)
            log.info("%s %s: step %d/%d (%.0f%%), %.0f img/s, epoch done in %.1f min", self.label, self._epoch, step,
                     steps, 100 * step / steps, rate * images_per_step, (steps - step) / rate / 60)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def logging_above_bars(self) -> ContextManager[Any]:
        """While bars are drawn, console log lines go through tqdm.write, above the bars instead of
        through them; a no-op without bars."""
        return logging_redirect_tqdm() if self.bar and sys.stderr.isatty() else nullcontext()


PROGRESS = "progress"  # the sweep folder's subfolder: one file per run, epochs done and trained


def sweep_epoch(sweep_dir: Path, run: str, done: int, trained: bool) -> None:
    """Record that `run` has `done` epochs (`trained`: one more in this sweep) and log the
    sweep's progress with an ETA at this sweep's pace, when its total is known (sweep.json)."""
    path = sweep_dir / PROGRESS / f"{run}.json"
    previous = _read(path) or {"trained": 0}
    atomic.write_json(path, {"done": done, "trained": previous["trained"] + int(trained)})
    sweep = _read(sweep_dir / "sweep.json") or {}
    total = sweep.get("run_epochs")
    if not trained or not total:
        return
    runs = [_read(p) or {"done": 0, "trained": 0} for p in (sweep_dir / PROGRESS).glob("*.json")]
    done_all, trained_all = sum(r["done"] for r in runs), sum(r["trained"] for r in runs)
    elapsed = time.time() - sweep["started"]
    eta = (total - done_all) * elapsed / trained_all  # trained_all >= 1: this call trained an epoch
    log.info("sweep progress: %d of %d run-epochs done (%.0f%%) after %.0f min; ETA %.0f min at this sweep's pace",
             done_all, total, 100 * done_all / total, elapsed / 60, eta / 60)


def _read(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
