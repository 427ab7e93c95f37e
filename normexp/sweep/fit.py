"""A preset's sweep at the longest budget that fits a wall-clock allowance (`normexp-fit`).

1. `probe` runs the sweep's jobs at once for 2 epochs of a stratified subset of the training set,
   so each batch size keeps its share of the steps. The jobs time-share the machine, so the longest
   job (the smallest batch, the most steps) ends about when the whole probe's work is done: its 2
   epochs, less its compilation (`compile_seconds`), are 2 epochs of the whole sweep's work, scaled
   to the full training set. Start-up (processes, data) is the probe's wall time before that job's
   first epoch; compilation is added once more for the sweep. A probe whose jobs fail is rerun with
   the step uncaptured, then fully eager as well (FALLBACKS).
2. `budget`: epochs = floor((allowance left - start-up - compilation) / (margin x the sweep's
   epoch)), at most the preset's. A step schedule's milestones are scaled to that many epochs
   (`scaled_milestones`), and parity is required only at the preset's full, converged budget.
3. The sweep trains until the allowance ends (`Sweep.train` stops it: SIGTERM, then SIGKILL);
   finished runs stay. normexp.cli.fit records the choice, its evidence and the outcome.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normexp import record

CIFAR10_TRAIN = 50_000  # the sweep trains on the whole training split unless told otherwise
FITTED = {"trainer.epochs", "optim.milestones", "verdict.require_parity"}  # what the fit sets for the sweep
# what a failing probe is retried with, in order: the default (a captured step on CUDA), the step
# uncaptured (compiled as runtime.compile's default then decides), eager without compilation
FALLBACKS: tuple[list[str], ...] = ([], ["runtime.capture=false"], ["runtime.capture=false", "runtime.compile=false"])


class FitError(Exception):
    """The fit cannot go on (a bad override, a failing probe, no epoch fits); its message says why."""


@dataclass(frozen=True)
class Sweep:
    """`normexp-train -m experiment=EXPERIMENT` run by `launcher` (joblib: a process per job; threads:
    every job in one process, each on its own CUDA stream)."""

    experiment: str
    launcher: str = "joblib"

    def train(self, overrides: list[str], timeout: float | None = None) -> int:
        """The sweep with `overrides`, stopped after `timeout` s; its exit code."""
        command = [sys.executable, "-m", "normexp.cli.train", "-m", f"experiment={self.experiment}",
                   f"hydra/launcher={self.launcher}", "runtime.progress=false", *overrides]
        print("$", " ".join(command), flush=True)
        process = subprocess.Popen(command, start_new_session=True)  # its own group: its workers stop with it
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"stopped at the allowance's end ({timeout:.0f} s)", flush=True)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                return process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                return process.wait()


def preset(experiment: str, overrides: list[str]) -> dict[str, Any]:
    """The preset as its sweep composes it with `overrides`: its epochs, milestones and schedule,
    whether its verdict requires parity, and the runs the sweep makes (grid points x seeds; a
    command-line value of a swept key replaces the preset's values, as Hydra's sweeper does)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from normexp.compose import check, checked_sweep_grid, one_line
    from normexp.config import seeds

    try:
        given = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise FitError(one_line(error, overrides)) from error
    fitted = sorted({o.key_or_group for o in given if o.is_sweep_override()} & FITTED)
    if fitted:
        raise FitError(f"the fit chooses {', '.join(fitted)} itself: do not sweep them")
    points, problem = checked_sweep_grid([f"experiment={experiment}", "hydra/launcher=joblib", *overrides])
    configs, problem = check(points) if problem is None else ([], problem)
    if problem:  # a bad setting in one line, before any probe trains
        raise FitError(problem)
    cfg = configs[0]  # the fitted settings are not swept: every job has the same
    return {"epochs": cfg.trainer.epochs, "milestones": list(cfg.optim.milestones),
            "step_schedule": cfg.optim.schedule == "step", "require_parity": bool(cfg.verdict.require_parity),
            "runs": sum(len(seeds(job)) for job in configs)}


def finished_runs(root: Path) -> int:
    """The runs below `root` that have ended (finished or diverged)."""
    return sum(record.read_summary(folder) is not None for folder in record.run_folders(root))


def probe_epochs(root: Path) -> list[dict[str, Any]]:
    """Each probe run's first two epochs' seconds and its compilation's (runs that did not finish
    both epochs are left out)."""
    found = []
    for folder in record.run_folders(root):
        epochs = record.read_metrics(folder)
        if len(epochs) >= 2:
            found.append({"run": folder.name, "epoch1_s": epochs[0]["seconds"], "epoch2_s": epochs[1]["seconds"],
                          "compile_s": compile_seconds(epochs)})
    return found


def compile_seconds(epochs: list[dict[str, Any]]) -> float:
    """A run's compilation: its epochs' recorded `compile_seconds` (normexp.train.step), or in a record
    without them (older code) its first epoch's seconds less its second's."""
    if any("compile_seconds" in epoch for epoch in epochs):
        return sum(epoch.get("compile_seconds", 0.0) for epoch in epochs)
    return epochs[0]["seconds"] - epochs[1]["seconds"]


def probe(sweep: Sweep, overrides: list[str], probe_images: int, train_images: int,
          expected_runs: int) -> dict[str, Any]:
    """Time the sweep's work on `probe_images` training images and scale it to `train_images`;
    retried with each of FALLBACKS while a job fails."""
    for compile_overrides in FALLBACKS:
        root = Path(tempfile.mkdtemp(prefix="normexp_fit_probe_"))
        start = time.monotonic()
        sweep.train([*overrides, *compile_overrides, f"data.train_subset={probe_images}", "trainer.epochs=2",
                     f"paths.results_root={root}"])  # the probe's own settings last: they win
        wall = time.monotonic() - start
        runs = probe_epochs(root)
        shutil.rmtree(root, ignore_errors=True)
        if len(runs) == expected_runs:
            return _probe_timing(runs, wall, probe_images, train_images) | {"compile_overrides": compile_overrides}
        print(f"probe: {len(runs)} of {expected_runs} runs finished 2 epochs", flush=True)
    raise FitError("the probe failed captured, uncaptured and eager; see the logs above")


def _probe_timing(runs: list[dict[str, Any]], wall: float, probe_images: int, train_images: int) -> dict[str, Any]:
    """The sweep's start-up, compilation and epoch seconds from a probe's runs (see the module's 1.)."""
    longest = max(runs, key=lambda r: r["epoch1_s"] + r["epoch2_s"])
    compile_s = max(r["compile_s"] for r in runs)
    two_epochs = longest["epoch1_s"] + longest["epoch2_s"] - compile_s
    return {"probe_images": probe_images, "probe_wall_s": wall,
            "startup_s": max(wall - longest["epoch1_s"] - longest["epoch2_s"], 0.0), "compile_s": compile_s,
            "sweep_epoch_s": two_epochs / 2 * train_images / probe_images, "probe_runs": runs}


def scaled_milestones(full: dict[str, Any], epochs: int) -> list[int]:
    """The preset's milestones at `epochs`: unchanged at its own epochs; otherwise scaled, rounded
    half up and at most the last epoch but one, so that every decay takes effect and the LR ends
    where the preset's does (5 of 100 epochs: [30, 60, 90] -> [2, 3, 4]; 2: [1, 1, 1])."""
    if epochs == full["epochs"]:
        return list(full["milestones"])
    scaled = (min(epochs - 1, math.floor(m / full["epochs"] * epochs + 0.5)) for m in full["milestones"])
    return sorted(m for m in scaled if m >= 1)


def budget(allowance_left: float, timing: dict[str, Any], margin: float, full: dict[str, Any]) -> dict[str, Any]:
    """The epochs that fit (at most the preset's), its milestones scaled to them, and whether parity
    is required (only at the preset's full budget, and only if the preset requires it)."""
    fixed = timing["startup_s"] + timing["compile_s"]
    epochs = min(full["epochs"], math.floor((allowance_left - fixed) / (timing["sweep_epoch_s"] * margin)))
    milestones = scaled_milestones(full, epochs) if epochs >= 1 else []
    if epochs < 1 or (full["step_schedule"] and full["milestones"] and not milestones):
        raise FitError(f"too few epochs fit ({epochs}; a step schedule needs 2): {allowance_left:.0f} s left, "
                       f"probe {timing}")
    return {"epochs": epochs, "milestones": milestones,
            "require_parity": full["require_parity"] and epochs == full["epochs"],
            "predicted_sweep_s": fixed + epochs * timing["sweep_epoch_s"]}


def fitted_overrides(full: dict[str, Any], chosen: dict[str, Any]) -> list[str]:
    """The overrides that give the sweep the chosen budget (milestones only for a step schedule)."""
    milestones = [f"optim.milestones=[{','.join(map(str, chosen['milestones']))}]"] if full["step_schedule"] else []
    return [f"trainer.epochs={chosen['epochs']}", *milestones,
            f"verdict.require_parity={str(chosen['require_parity']).lower()}"]
