"""Run `claim_gpu` at the longest budget that fits a wall-clock allowance on this machine.

1. A probe runs the sweep's jobs at once (joblib: the GPU idles between one job's small steps, so
   jobs side by side share it) for 2 epochs of a stratified subset of the training set, so each
   batch size keeps its share of the steps. The slowest job's second epoch, scaled to the full
   set, is the time per epoch; the probe's wall time minus its 2 epochs is the start-up (processes,
   data, compilation). A job that fails with compilation is probed again eager (runtime.compile=false).
2. epochs = floor((allowance left - start-up) / (margin x slowest job's full epoch)), at most the preset's
   100. The step schedule's milestones (30/60/90 of 100 epochs) are scaled to that many epochs, and
   parity is required only at the preset's full, converged budget. The choice and its evidence go
   to OUT/budget.json before the sweep starts.
3. The sweep trains into OUT/runs (stopped at the allowance's end; finished runs stay), and
   normexp-analyze writes OUT's tables, figures and verdict.

Usage: python scripts/claim_gpu.py --seconds 480 --out results/claim_gpu [override ...]
(overrides go to every normexp-train call, e.g. paths.cifar10_folder=/tmp/cifar10-jpeg).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CIFAR10_TRAIN = 50_000  # claim_gpu trains on the whole training split
PRESET_EPOCHS = 100
PRESET_MILESTONES = (0.3, 0.6, 0.9)  # claim_gpu's [30, 60, 90] of 100 epochs


def train(overrides: list[str], timeout: float | None = None) -> int:
    """`normexp-train -m experiment=claim_gpu` with the joblib launcher, stopped after `timeout` s; its exit code."""
    command = [sys.executable, "-m", "normexp.cli.train", "-m", "experiment=claim_gpu", "hydra/launcher=joblib",
               "runtime.progress=false", *overrides]
    print("$", " ".join(command), flush=True)
    process = subprocess.Popen(command, start_new_session=True)  # its own group: its workers stop with it
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"stopped at the allowance's end ({timeout:.0f} s)", flush=True)
        os.killpg(process.pid, signal.SIGTERM)
        return process.wait()


def probe_epochs(root: Path) -> list[dict]:
    """Each probe run's epochs 1 and 2 (runs that did not finish both are left out)."""
    found = []
    for metrics in sorted(root.glob("*/metrics.jsonl")):
        epochs = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if len(epochs) >= 2:
            found.append({"run": metrics.parent.name, "epoch1": epochs[0], "epoch2": epochs[1]})
    return found


def probe(overrides: list[str], images: int, train_images: int, expected: int) -> dict:
    """Time the sweep's jobs on `images` training images and scale to `train_images`; falls back
    to eager if a job fails."""
    for compile_flag in ([], ["runtime.compile=false"]):
        root = Path(tempfile.mkdtemp(prefix="claim_gpu_probe_"))
        start = time.monotonic()
        train([f"data.train_subset={images}", "trainer.epochs=2", f"paths.results_root={root}",
               *compile_flag, *overrides])
        wall = time.monotonic() - start
        runs = probe_epochs(root)
        if len(runs) == expected:
            scale = train_images / images
            full = max(r["epoch2"]["train_seconds"] * scale + r["epoch2"]["eval_seconds"] for r in runs)
            slowest = max(r["epoch2"]["seconds"] for r in runs)
            return {"probe_images": images, "probe_wall_s": wall, "runs": len(runs), "compile_flag": compile_flag,
                    "startup_s": max(wall - 2 * slowest, 0.0), "full_epoch_s": full}
        print(f"probe: {len(runs)} of {expected} runs finished 2 epochs", flush=True)
    raise SystemExit("the probe failed with and without compilation; see the logs above")


def budget(allowance_left: float, timing: dict, margin: float) -> dict:
    """The epochs that fit, the scaled milestones and whether parity is required."""
    per_epoch = timing["full_epoch_s"] * margin
    epochs = min(PRESET_EPOCHS, math.floor((allowance_left - timing["startup_s"]) / per_epoch))
    if epochs < 1:
        raise SystemExit(f"not even one epoch fits: {allowance_left:.0f} s left, probe {timing}")
    milestones = sorted({max(1, round(f * epochs)) for f in PRESET_MILESTONES} - {epochs})
    return {"epochs": epochs, "milestones": milestones, "require_parity": epochs == PRESET_EPOCHS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock allowance, probe included")
    parser.add_argument("--out", type=Path, required=True, help="results folder (runs go to OUT/runs)")
    parser.add_argument("--probe-images", type=int, default=4096)
    parser.add_argument("--train-images", type=int, default=CIFAR10_TRAIN,
                        help="train the sweep on a stratified subset of this many images (tests)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs of the sweep (norms x batch sizes)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per job (one run folder each)")
    parser.add_argument("--margin", type=float, default=1.3,
                        help="factor on the probe's epoch: the slowest job's 2nd probe epoch runs beside fewer "
                             "jobs than its epochs in the sweep do")
    parser.add_argument("--reserve", type=float, default=30.0, help="seconds kept for the analysis")
    args, overrides = parser.parse_known_args()
    deadline = time.monotonic() + args.seconds - args.reserve
    launcher = [f"hydra.launcher.n_jobs={args.jobs}"]
    subset = [f"data.train_subset={args.train_images}"] if args.train_images < CIFAR10_TRAIN else []

    timing = probe(launcher + overrides, args.probe_images, args.train_images, args.jobs * args.seeds)
    chosen = budget(deadline - time.monotonic(), timing, args.margin)
    record = {"allowance_s": args.seconds, "margin": args.margin, **timing, **chosen,
              "overrides": overrides, "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget.json").write_text(json.dumps(record, indent=2) + "\n")
    print("budget:", json.dumps(record), flush=True)

    train([f"trainer.epochs={chosen['epochs']}", f"optim.milestones=[{','.join(map(str, chosen['milestones']))}]",
           f"verdict.require_parity={str(chosen['require_parity']).lower()}", f"paths.results_root={args.out / 'runs'}",
           *subset, *timing["compile_flag"], *launcher, *overrides], timeout=max(deadline - time.monotonic(), 1.0))
    subprocess.run([sys.executable, "-m", "normexp.cli.analyze", str(args.out)], check=False)


if __name__ == "__main__":
    main()
