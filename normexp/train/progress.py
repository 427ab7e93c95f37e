"""Progress within an epoch, from its first minute: a bar that names the job's runs where the job
is alone on a terminal, a line every minute otherwise (log files, nohup, and the jobs of a sweep
that train at once: their bars would share one line and take each other's log lines). A sweep's
own lines, with its ETA as each epoch ends, are normexp.sweep.progress's."""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("normexp")

# tqdm's default lock adds a multiprocessing one, whose semaphore a worker process (joblib's) stopped
# by Ctrl-C leaks (resource_tracker's warning at exit); one process draws the bars, a thread lock does
BAR_LOCK = threading.RLock()


@dataclass
class StepProgress:
    """Within an epoch: a tqdm bar when asked for (`bar`: the job is alone on its console) and
    attached to a terminal, else a log line at most every `every_s` seconds."""

    label: str
    bar: bool = False
    every_s: float = 60.0
    _bar: Any = field(default=None, init=False)
    _start: float = field(default=0.0, init=False)
    _last: float = field(default=0.0, init=False)
    _epoch: str = field(default="", init=False)

    def start(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._start = f"epoch {epoch}/{epochs}", time.perf_counter()
        self._last = self._start
        if self.bar and sys.stderr.isatty():
            tqdm.set_lock(BAR_LOCK)
            self._bar = tqdm(total=steps, desc=f"{self.label} {self._epoch}", leave=False, unit="step")

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
