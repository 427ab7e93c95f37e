"""A run's `train.log`: its own lines (logger normexp.run.<name>) while it is open, and the job's
shared lines (logger `normexp`) from the thread that trains it while it trains. Under
hydra/launcher=threads other jobs train in other threads of the process, so a run's log takes the
shared lines of its own thread only."""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from normexp import record


@contextmanager
def run_logger(directory: Path) -> Iterator[logging.Logger]:
    """A logger for one run, whose lines go to the run's `train.log` while it is open (the
    conductor closes it when the run finishes); the job's shared lines join them under `shared_lines`."""
    shared = logging.getLogger("normexp")
    if shared.level == logging.NOTSET or shared.level > logging.INFO:
        shared.setLevel(logging.INFO)
    run_log = logging.getLogger(f"normexp.run.{directory.name}")
    with _log_file(run_log, directory):
        yield run_log


@contextmanager
def shared_lines(directory: Path) -> Iterator[None]:
    """The job's shared lines (logger `normexp`, from this thread) also go to the run's `train.log`
    while this is open: from when the run starts training until it finishes, so they never name runs
    trained before or after it."""
    with _log_file(logging.getLogger("normexp"), directory, _this_thread_only()):
        yield


def _this_thread_only() -> Callable[[logging.LogRecord], bool]:
    """A log filter that takes the shared `normexp` lines logged from the calling thread, and no
    run's own lines (logger normexp.run.*: each run's own handler writes those)."""
    thread = threading.get_ident()
    return lambda line: line.thread == thread and not line.name.startswith("normexp.run.")


@contextmanager
def _log_file(logger: logging.Logger, directory: Path,
              only: Optional[Callable[[logging.LogRecord], bool]] = None) -> Iterator[None]:
    handler = logging.FileHandler(directory / record.LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if only is not None:
        handler.addFilter(only)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
