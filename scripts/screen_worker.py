"""One worker (one core) of the parity screen, its combinations and the whole figure, in the background.

Usage: python scripts/screen_worker.py WORKER --runs DIR --train-from WORKTREE
           [--figure-runs DIR --figure-from WORKTREE [--first figure|screen]] [--wait PID]
Waits for PID (a run already training on this core) to exit, then trains, one job at a time, the
first job of its list that is not finished, and recomputes the list after each job it trained.
The screen's list: reflection combined with each screen arm whose own gap closes >= 0.5
(conf/experiment/parity_combo.yaml), then the screen's arms in order (parity_screen.yaml); they train
from WORKTREE with `experiment=parity_screen` plus each run's overrides (a combination adds
data.crop_fill=reflect: the same run identity as parity_combo's).
The figure's list, once the screen has a recipe (an arm at parity): parity_figure.yaml's 12 runs under
it, at 32 images per device first, then at 2 (seeds 1-3, BN then GN; one job per seed, or per norm
where a CPU step packs the seeds), trained from --figure-from into --figure-runs. The first table that has a recipe
records it in DIR/recipe.json; later ones keep it (parity_combo.yaml: the first recipe stands).
--first says which list this worker trains first; it goes on to the other when its own is done.
Finished runs are skipped, unfinished ones resume; a run the other worker holds is skipped by the
trainer's lock. With nothing left, a worker waits while another run is training, then looks again.
The lists are decided with this checkout's analysis; start it from a frozen checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import pandas as pd

from normexp.analysis import screen
from normexp.files import atomic

FIGURE_BATCHES, FIGURE_SEEDS = (32, 2), (1, 2, 3)  # parity_figure.yaml's cells, in the order they train
RECIPE = "recipe.json"
WAIT = 600  # seconds between lists when nothing is left to train but another run is training
TRAINED = 120  # seconds: a job that ran longer trained (a finished or held one exits at once)


@dataclass(frozen=True)
class Job:
    """One job (one run, or packed seeds): the preset, its overrides, the results root and the frozen
    checkout it trains from."""

    experiment: str
    overrides: str
    runs: Path
    worktree: Path


def log(worker: int, message: str) -> None:
    print(f"=== {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} worker {worker}: {message}", flush=True)


def screen_table(worker: int, runs: Path, reference: Path) -> Optional[pd.DataFrame]:
    """The screen's table; None before its first run finishes, or (logged) when the analysis refuses
    the records: then only the screen's single arms are listed."""
    try:
        return screen.screen_table(screen.arm_runs(runs, reference))
    except screen.NoFinishedRuns:
        return None
    except ValueError as error:
        log(worker, f"the screen's table is refused, so no combination or figure is listed: {error}")
        return None


def combinations(table: Optional[pd.DataFrame]) -> list[str]:
    """Reflection combined with each partner arm whose own gap closes >= 0.5 of the reference's, in
    the presets' order (parity_combo.yaml)."""
    if table is None:
        return []
    closes = table.set_index("arm")["closes"]  # NaN while a pair is unfinished: compares False
    return [f"{screen.ARMS[0]}, {arm}" for arm in screen.PARTNERS
            if arm in closes.index and closes[arm] >= screen.CARRIES_PART]


def recorded_recipe(runs: Path, table: Optional[pd.DataFrame]) -> Optional[str]:
    """The recipe recorded in runs/recipe.json; the first table that has one records it there."""
    path = runs / RECIPE
    arm = None if table is None or path.is_file() else screen.recipe(table)
    if arm is not None and table is not None:
        draft = runs / f".{RECIPE}.{os.getpid()}"
        atomic.write_json(draft, {"arm": arm, "overrides": screen.recipe_overrides(arm),
                                  "recorded_at": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
                                  "at_parity": table[table["reading"] == screen.AT_PARITY].to_dict("records")})
        try:
            os.link(draft, path)  # fails if the other worker recorded one first: its recipe stands
        except FileExistsError:
            pass
        draft.unlink()
    return str(json.loads(path.read_text())["arm"]) if path.is_file() else None


def screen_jobs(args: argparse.Namespace, table: Optional[pd.DataFrame]) -> list[Job]:
    """The combinations' runs, then the screen's arms' runs, BN before GN."""
    return [Job("parity_screen", f"data.batch_size=32 {' '.join(overrides)}", args.runs, args.train_from)
            for arm in combinations(table) + list(screen.ARMS)
            for overrides in screen.training_overrides(arm).values()]


def figure_seeds(batch: int, overrides: list[str]) -> list[str]:
    """The `seed=` values of the figure's jobs at `batch`: its seeds packed as one job where a CPU step
    packs them (harness.trains_packed: at 2 images per step an eager step of 3 packed seeds takes about
    3/4 of 3 alone, results/parity_figure/bench), else one job per seed (the other worker can take one)."""
    import torch

    from normexp.compose import compose
    from normexp.train.harness import trains_packed

    cfg = compose(["experiment=parity_figure", f"data.batch_size={batch}", *overrides])
    if trains_packed(cfg, torch.device("cpu"), len(FIGURE_SEEDS)):
        return [f"[{','.join(map(str, FIGURE_SEEDS))}]"]
    return [str(seed) for seed in FIGURE_SEEDS]


def figure_jobs(args: argparse.Namespace, recipe: Optional[str]) -> list[Job]:
    """parity_figure's runs under `recipe`: per batch (FIGURE_BATCHES' order), its seeds' jobs, BN then GN."""
    if recipe is None or args.figure_runs is None:
        return []
    overrides = screen.recipe_overrides(recipe)
    return [Job("parity_figure", f"seed={seed} data.batch_size={batch} {' '.join(overrides[kind])}",
                args.figure_runs, args.figure_from)
            for batch in FIGURE_BATCHES for seed in figure_seeds(batch, overrides["bn"]) for kind in ("bn", "gn")]


def run_list(args: argparse.Namespace) -> list[Job]:
    table = screen_table(args.worker, args.runs, args.reference)
    screen_list, figure_list = screen_jobs(args, table), figure_jobs(args, recorded_recipe(args.runs, table))
    return figure_list + screen_list if args.first == "figure" else screen_list + figure_list


def others_training() -> bool:
    """Whether a training process other than this worker's is running (it may yet add a recipe)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"normexp.cli.train" in cmdline.read_bytes():
                return True
        except OSError:  # gone since the glob
            continue
    return False


def train(worker: int, job: Job) -> bool:
    """Train one job (a run, or packed seeds); True when it ran longer than TRAINED: it trained (if it
    failed, or the other worker held some of its seeds, the recomputed list shows what is left)."""
    start = time.time()
    log(worker, f"{job.experiment}: {job.overrides}")
    command = [sys.executable, "-m", "normexp.cli.train", f"experiment={job.experiment}", "runtime.threads=1",
               f"paths.results_root={job.runs}", *job.overrides.split()]
    rc = subprocess.call(command, cwd=job.worktree, env=dict(os.environ, PYTHONPATH=str(job.worktree)))
    log(worker, f"rc={rc} after {time.time() - start:.0f} s: {job.experiment}: {job.overrides}")
    return time.time() - start > TRAINED


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker", type=int)
    parser.add_argument("--runs", type=Path, required=True, help="the screen's results root")
    parser.add_argument("--train-from", type=Path, required=True, help="the frozen worktree the screen trains from")
    parser.add_argument("--figure-runs", type=Path, default=None, help="the figure's results root (none: no figure)")
    parser.add_argument("--figure-from", type=Path, default=None, help="the frozen worktree the figure trains from")
    parser.add_argument("--first", choices=("figure", "screen"), default="screen")
    parser.add_argument("--reference", type=Path, default=Path(__file__).parents[1] / "results" / "converged")
    parser.add_argument("--wait", type=int, default=None, help="a process to wait for first")
    args = parser.parse_args()
    if (args.figure_runs is None) != (args.figure_from is None):
        parser.error("--figure-runs and --figure-from go together")
    for name in ("runs", "train_from", "figure_runs", "figure_from"):
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    return args


def main() -> None:
    args = parse_args()
    while args.wait and Path(f"/proc/{args.wait}").exists():
        time.sleep(30)
    while True:
        for job in run_list(args):
            if train(args.worker, job):
                break  # it trained: recompute the lists
            time.sleep(5 * args.worker)
        else:
            if not others_training():
                log(args.worker, "nothing left to train")
                return
            time.sleep(WAIT)  # the other worker's run may finish a pair: recompute the lists then


if __name__ == "__main__":
    main()
