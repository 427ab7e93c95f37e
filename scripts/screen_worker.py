"""One worker (one core) of the parity screen and its combinations, run in the background.

Usage: python scripts/screen_worker.py WORKER --runs DIR --train-from WORKTREE [--wait PID]
Waits for PID (a run already training on this core) to exit, then trains, one run at a time, the
first run of its list that is not finished, and recomputes the list after each run it trained:
reflection combined with each screen arm whose own gap closes >= 0.5 (conf/experiment/
parity_combo.yaml), then the screen's arms in order (parity_screen.yaml). Finished runs are
skipped, unfinished ones resume; a run the other worker holds is skipped by the trainer's lock.
Runs train from WORKTREE (a frozen checkout) with `experiment=parity_screen` plus each run's
overrides (a combination adds data.crop_fill=reflect: the same run identity as parity_combo's).
The list is decided with this checkout's analysis; start it from a frozen checkout too.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from normexp.analysis import screen

SCREEN = ["norm=gn data.crop_fill=reflect", "norm=bn data.crop_fill=reflect",
          "norm=bn data.devices=1 optim.ref_batch_size=32", "norm=gn data.devices=1 optim.ref_batch_size=32",
          "norm=gn4", "norm=gn2", "norm=bn data.crop_fill=mean", "norm=gn data.crop_fill=mean",
          "norm=bn model.depth=20", "norm=gn model.depth=20"]
# A partner arm, as the screen's table names it -> the runs it adds to reflection
COMBINATIONS = {"data.devices=1, optim.ref_batch_size=32": ["norm=bn data.devices=1 optim.ref_batch_size=32",
                                                            "norm=gn data.devices=1 optim.ref_batch_size=32"],
                "norm.groups=4": ["norm=gn4"], "norm.groups=2": ["norm=gn2"],
                "model.depth=20": ["norm=bn model.depth=20", "norm=gn model.depth=20"]}
TRAINED = 120  # seconds: a run that ended well after longer trained (a finished or held one exits at once)


def log(worker: int, message: str) -> None:
    print(f"=== {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} worker {worker}: {message}", flush=True)


def partners(runs: Path, reference: Path) -> list[str]:
    """The partner arms whose own gap closes >= 0.5 of the reference's, in the preset's order."""
    try:
        table = screen.screen_table(screen.arm_runs(runs, reference))
    except ValueError:  # no finished run yet
        return []
    closes = table.set_index("arm")["closes"]  # NaN while a pair is unfinished: compares False
    return [arm for arm in COMBINATIONS if arm in closes.index and closes[arm] >= screen.CARRIES_PART]


def run_list(runs: Path, reference: Path) -> list[str]:
    combined = [f"{run} data.crop_fill=reflect" for arm in partners(runs, reference) for run in COMBINATIONS[arm]]
    return combined + SCREEN


def train(worker: int, overrides: str, runs: Path, worktree: Path) -> bool:
    """Train one run; True when it trained and ended well (the list is then recomputed)."""
    start = time.time()
    log(worker, overrides)
    command = [sys.executable, "-m", "normexp.cli.train", "experiment=parity_screen", "data.batch_size=32",
               "runtime.threads=1", f"paths.results_root={runs}", *overrides.split()]
    rc = subprocess.call(command, cwd=worktree, env=dict(os.environ, PYTHONPATH=str(worktree)))
    log(worker, f"rc={rc} after {time.time() - start:.0f} s: {overrides}")
    return rc == 0 and time.time() - start > TRAINED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker", type=int)
    parser.add_argument("--runs", type=Path, required=True, help="the screen's results root (absolute)")
    parser.add_argument("--train-from", type=Path, required=True, help="the frozen worktree runs train from")
    parser.add_argument("--reference", type=Path, default=Path(__file__).parents[1] / "results" / "converged")
    parser.add_argument("--wait", type=int, default=None, help="a process to wait for first")
    args = parser.parse_args()
    while args.wait and Path(f"/proc/{args.wait}").exists():
        time.sleep(30)
    while True:
        for overrides in run_list(args.runs, args.reference):
            if train(args.worker, overrides, args.runs.resolve(), args.train_from.resolve()):
                break  # it trained: recompute the list
            time.sleep(5 * args.worker)
        else:
            log(args.worker, "nothing left to train")
            return


if __name__ == "__main__":
    main()
