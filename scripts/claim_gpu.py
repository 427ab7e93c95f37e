"""Run `claim_gpu` at the longest budget that fits a wall-clock allowance on this machine.

1. A probe runs the sweep's jobs at once (joblib) for 2 epochs of a stratified subset of the
   training set, so each batch size keeps its share of the steps. The jobs time-share the GPU, so
   the longest job (the smallest batch, the most steps) ends about when the whole probe's work is
   done: its 2 epochs, less its compilation (epoch 1 minus epoch 2), are 2 epochs of the whole
   sweep's work, scaled to the full training set. Start-up (processes, data) is the probe's wall
   time before that job's first epoch; compilation is added once more for the sweep. A probe whose
   jobs fail is rerun with the step uncaptured (runtime.capture=false), then fully eager as well
   (runtime.compile=false): FALLBACKS.
2. epochs = floor((allowance left - start-up - compilation) / (margin x the sweep's epoch)), at most
   the preset's (100, composed with the overrides like every number here). The step schedule's
   milestones (30/60/90 of 100 epochs) are scaled to that many epochs (`scaled_milestones`), and
   parity is required only at the preset's full, converged budget.
   The choice and its evidence (each probe job's epochs) go to OUT/budget.json before the sweep starts.
3. The sweep trains into OUT/runs. At the allowance's end it is stopped (SIGTERM, then SIGKILL);
   finished runs stay, budget.json records how many finished, and the script exits 1 unless all did.
   normexp-analyze then writes OUT's tables, figures and verdict.

Usage: python scripts/claim_gpu.py --seconds 480 --out results/claim_gpu [override ...]
(overrides go to every normexp-train call before the chosen budget, e.g.
paths.cifar10_folder=/tmp/cifar10-jpeg).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normexp.files import atomic

CIFAR10_TRAIN = 50_000  # claim_gpu trains on the whole training split
FITTED = {"trainer.epochs", "optim.milestones", "verdict.require_parity"}  # what the script sets for the sweep


def preset(overrides: list[str]) -> dict:
    """`claim_gpu` as its sweep composes it with `overrides`: its epochs, milestones and schedule,
    whether its verdict requires parity, and the runs the sweep makes (grid points x seeds; a
    command-line value of a swept key replaces the preset's values, as Hydra's sweeper does)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from normexp.compose import axes, compose
    from normexp.config import seeds

    try:
        given = OverridesParser.create().parse_overrides(overrides)
        fitted = sorted({o.key_or_group for o in given if o.is_sweep_override()} & FITTED)
        if fitted:
            raise SystemExit(f"claim_gpu.py chooses {', '.join(fitted)} itself: do not sweep them")
        cfg = compose(["experiment=claim_gpu", "hydra/launcher=joblib",
                       *(o.input_line for o in given if not o.is_sweep_override())], hydra=True)
        grid = axes(OmegaConf.to_container(cfg.hydra.sweeper.params), overrides)
    except HydraException as error:
        raise SystemExit(f"claim_gpu.py: {error}") from error
    return {"epochs": cfg.trainer.epochs, "milestones": list(cfg.optim.milestones),
            "step_schedule": cfg.optim.schedule == "step", "require_parity": bool(cfg.verdict.require_parity),
            "runs": math.prod(len(values) for values in grid.values()) * len(seeds(cfg))}


LAUNCHER = ["hydra/launcher=joblib"]  # --launcher: joblib's processes, or gpu (one process, a stream per job)


def train(overrides: list[str], timeout: float | None = None) -> int:
    """`normexp-train -m experiment=claim_gpu` with LAUNCHER, stopped after `timeout` s; its exit code."""
    command = [sys.executable, "-m", "normexp.cli.train", "-m", "experiment=claim_gpu", *LAUNCHER,
               "runtime.progress=false", *overrides]
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


def finished_runs(root: Path) -> int:
    return len(list(root.glob("*/summary.json")))


def probe_epochs(root: Path) -> list[dict]:
    """Each probe run's first two epochs' seconds (runs that did not finish both are left out)."""
    found = []
    for metrics in sorted(root.glob("*/metrics.jsonl")):
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if len(epochs) >= 2:
            found.append({"run": metrics.parent.name, "epoch1_s": epochs[0]["seconds"],
                          "epoch2_s": epochs[1]["seconds"]})
    return found


# what a failing probe is retried with, in order: the default (a captured step on CUDA), the step
# uncaptured (compiled as runtime.compile's default then decides), eager without compilation
FALLBACKS = ([], ["runtime.capture=false"], ["runtime.capture=false", "runtime.compile=false"])


def probe(overrides: list[str], probe_images: int, train_images: int, expected_runs: int) -> dict:
    """Time the sweep's work on `probe_images` training images and scale it to `train_images`;
    retried with each of FALLBACKS while a job fails."""
    for compile_overrides in FALLBACKS:
        root = Path(tempfile.mkdtemp(prefix="claim_gpu_probe_"))
        start = time.monotonic()
        train([*overrides, *compile_overrides, f"data.train_subset={probe_images}", "trainer.epochs=2",
               f"paths.results_root={root}"])  # the probe's own settings last: they win
        wall = time.monotonic() - start
        runs = probe_epochs(root)
        shutil.rmtree(root, ignore_errors=True)
        if len(runs) == expected_runs:
            longest = max(runs, key=lambda r: r["epoch1_s"] + r["epoch2_s"])
            compile_s = max(r["epoch1_s"] - r["epoch2_s"] for r in runs)
            two_epochs = longest["epoch1_s"] + longest["epoch2_s"] - compile_s
            return {"probe_images": probe_images, "probe_wall_s": wall, "compile_overrides": compile_overrides,
                    "startup_s": max(wall - longest["epoch1_s"] - longest["epoch2_s"], 0.0), "compile_s": compile_s,
                    "sweep_epoch_s": two_epochs / 2 * train_images / probe_images, "probe_runs": runs}
        print(f"probe: {len(runs)} of {expected_runs} runs finished 2 epochs", flush=True)
    raise SystemExit("the probe failed captured, uncaptured and eager; see the logs above")


def scaled_milestones(full: dict, epochs: int) -> list[int]:
    """The preset's milestones at `epochs`: unchanged at its own epochs; otherwise scaled, rounded
    half up and at most the last epoch but one, so that every decay takes effect and the LR ends
    where the preset's does (5 of 100 epochs: [30, 60, 90] -> [2, 3, 4]; 2: [1, 1, 1])."""
    if epochs == full["epochs"]:
        return list(full["milestones"])
    scaled = (min(epochs - 1, math.floor(m / full["epochs"] * epochs + 0.5)) for m in full["milestones"])
    return sorted(m for m in scaled if m >= 1)


def budget(allowance_left: float, timing: dict, margin: float, full: dict) -> dict:
    """The epochs that fit (at most the preset's), its milestones scaled to them, and whether parity
    is required (only at the preset's full budget, and only if the preset requires it)."""
    fixed = timing["startup_s"] + timing["compile_s"]
    epochs = min(full["epochs"], math.floor((allowance_left - fixed) / (timing["sweep_epoch_s"] * margin)))
    milestones = scaled_milestones(full, epochs) if epochs >= 1 else []
    if epochs < 1 or (full["step_schedule"] and full["milestones"] and not milestones):
        raise SystemExit(f"too few epochs fit ({epochs}; a step schedule needs 2): {allowance_left:.0f} s left, "
                         f"probe {timing}")
    return {"epochs": epochs, "milestones": milestones,
            "require_parity": full["require_parity"] and epochs == full["epochs"],
            "predicted_sweep_s": fixed + epochs * timing["sweep_epoch_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock allowance, probe included")
    parser.add_argument("--out", type=Path, required=True, help="results folder (runs go to OUT/runs)")
    parser.add_argument("--probe-images", type=int, default=8192)
    parser.add_argument("--train-images", type=int, default=CIFAR10_TRAIN,
                        help="train the sweep on a stratified subset of this many images (tests)")
    parser.add_argument("--parallel", type=int, default=12, help="jobs at once (the launcher's n_jobs)")
    parser.add_argument("--launcher", choices=["joblib", "gpu"], default="joblib",
                        help="joblib: a process per job; gpu: every job in one process, each on its own CUDA "
                             "stream (hydra/launcher=gpu, not yet timed on a GPU); default %(default)s")
    parser.add_argument("--margin", type=float, default=1.2, help="factor on the probe's time per epoch")
    parser.add_argument("--reserve", type=float, default=30.0, help="seconds kept for the analysis")
    args, overrides = parser.parse_known_args()
    LAUNCHER[:] = [f"hydra/launcher={args.launcher}"]
    full = preset(overrides)
    deadline = time.monotonic() + args.seconds - args.reserve
    launcher = [f"hydra.launcher.n_jobs={args.parallel}"]
    subset = [f"data.train_subset={args.train_images}"] if args.train_images < CIFAR10_TRAIN else []

    timing = probe(launcher + overrides, args.probe_images, args.train_images, full["runs"])
    chosen = budget(deadline - time.monotonic(), timing, args.margin, full)
    record = {"allowance_s": args.seconds, "margin": args.margin, **timing, **chosen,
              "overrides": overrides, "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "budget.json", record)
    print("budget:", json.dumps({k: v for k, v in record.items() if k != "probe_runs"}), flush=True)

    start = time.monotonic()
    code = train([*launcher, *overrides, *subset, *timing["compile_overrides"], f"trainer.epochs={chosen['epochs']}",
                  f"optim.milestones=[{','.join(map(str, chosen['milestones']))}]",
                  f"verdict.require_parity={str(chosen['require_parity']).lower()}",
                  f"paths.results_root={args.out / 'runs'}"], timeout=max(deadline - time.monotonic(), 1.0))
    finished = finished_runs(args.out / "runs")
    record.update(sweep_s=time.monotonic() - start, sweep_exit_code=code, finished_runs=finished)
    atomic.write_json(args.out / "budget.json", record)
    subprocess.run([sys.executable, "-m", "normexp.cli.analyze", str(args.out)], check=False)
    if finished < full["runs"]:
        raise SystemExit(f"only {finished} of {full['runs']} runs finished in the allowance: the verdict above "
                         "is on the batch sizes that finished (see budget.json)")


if __name__ == "__main__":
    main()
