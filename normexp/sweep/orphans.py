"""A sweep's worker processes (hydra/launcher=joblib: loky workers) die with the process that
started the sweep: each watches it from a daemon thread and ends itself, as a kill would, once it
is gone, so a `kill -9` of `normexp-train -m` leaves no worker training on (finished epochs are kept:
every record is written atomically, and a rerun resumes). `mark_main` names that process in the
environment the workers inherit; `die_with_main` starts the watch in a worker (nothing elsewhere)."""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("normexp")

MAIN_PID = "NORMEXP_SWEEP_PID"  # the process that started the sweep, inherited by its workers
_watching = threading.Event()


def mark_main() -> None:
    """Name this process as the one that starts the sweep's workers."""
    os.environ[MAIN_PID] = str(os.getpid())


def _main_alive(main: int, direct: bool) -> bool:
    """Whether the sweep's main process lives: still this process's parent (`direct`: a dead parent's
    children pass to another), else by its pid."""
    if direct:
        return os.getppid() == main
    try:
        os.kill(main, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a pid taken by another user's process: ours is gone
        return False
    return True


def _watch(main: int, direct: bool, interval: float) -> None:
    while _main_alive(main, direct):
        time.sleep(interval)
    log.error("the sweep's main process (pid %d) has ended: this worker (pid %d) ends too; finished epochs are "
              "kept, rerun the command to resume", main, os.getpid())
    os._exit(1)


def die_with_main(interval: float = 1.0) -> None:
    """In a worker of a sweep (a process other than the one `mark_main` named), watch that process
    and end this one when it is gone; once per process."""
    main = os.environ.get(MAIN_PID)
    if main is None or int(main) == os.getpid() or _watching.is_set():
        return
    _watching.set()
    direct = os.getppid() == int(main)
    threading.Thread(target=_watch, args=(int(main), direct, interval), name="sweep-watch", daemon=True).start()
