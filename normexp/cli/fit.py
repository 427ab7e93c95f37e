"""`normexp-fit --seconds S --out OUT [OVERRIDE ...]`: a preset's sweep at the longest budget that fits.

The preset is claim_gpu by default; the budget is the longest that fits S seconds on this machine,
probe included (normexp.sweep.fit).

The choice and its evidence (each probe job's epochs) go to OUT/budget.json before the sweep
starts; the sweep trains into OUT/runs; at the allowance's end it is stopped, finished runs stay,
budget.json records how many finished, and normexp-analyze writes OUT's tables, figures and
verdict. Exit 1 unless every run finished. The overrides go to every normexp-train call before the
chosen budget (e.g. paths.cifar10_folder=/tmp/cifar10-jpeg).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from normexp.files import atomic
from normexp.sweep.fit import CIFAR10_TRAIN, FitError, Sweep, budget, finished_runs, fitted_overrides, preset, probe


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="normexp-fit", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True, help="wall-clock allowance, probe included")
    parser.add_argument("--out", type=Path, required=True, help="results folder (runs go to OUT/runs)")
    parser.add_argument("--experiment", default="claim_gpu", help="the preset to fit (default %(default)s)")
    parser.add_argument("--probe-images", type=int, default=8192)
    parser.add_argument("--train-images", type=int, default=CIFAR10_TRAIN,
                        help="train the sweep on a stratified subset of this many images (tests)")
    parser.add_argument("--parallel", type=int, default=12, help="jobs at once (the launcher's n_jobs)")
    parser.add_argument("--launcher", choices=["joblib", "threads"], default="joblib",
                        help="joblib: a process per job; threads: every job in one process (on a GPU each on "
                             "its own CUDA stream; hydra/launcher=threads); default %(default)s")
    parser.add_argument("--margin", type=float, default=1.2, help="factor on the probe's time per epoch")
    parser.add_argument("--reserve", type=float, default=30.0, help="seconds kept for the analysis")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, overrides = parse_args(argv)
    sweep = Sweep(args.experiment, args.launcher)
    try:
        full = preset(args.experiment, overrides)
        deadline = time.monotonic() + args.seconds - args.reserve
        launcher = [f"hydra.launcher.n_jobs={args.parallel}"]
        timing = probe(sweep, launcher + overrides, args.probe_images, args.train_images, full["runs"])
        chosen = budget(deadline - time.monotonic(), timing, args.margin, full)
    except FitError as error:
        print(f"normexp-fit: {error}", file=sys.stderr)
        return 2
    record = {"experiment": args.experiment, "allowance_s": args.seconds, "margin": args.margin, **timing,
              **chosen, "overrides": overrides, "command": " ".join(["normexp-fit", *argv])}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "budget.json", record)
    print("budget:", json.dumps({k: v for k, v in record.items() if k != "probe_runs"}), flush=True)

    start = time.monotonic()
    subset = [f"data.train_subset={args.train_images}"] if args.train_images < CIFAR10_TRAIN else []
    code = sweep.train([*launcher, *overrides, *subset, *timing["compile_overrides"], *fitted_overrides(full, chosen),
                        f"paths.results_root={args.out / 'runs'}"], timeout=max(deadline - time.monotonic(), 1.0))
    finished = finished_runs(args.out / "runs")
    record.update(sweep_s=time.monotonic() - start, sweep_exit_code=code, finished_runs=finished)
    atomic.write_json(args.out / "budget.json", record)
    subprocess.run([sys.executable, "-m", "normexp.cli.analyze", str(args.out)], check=False)
    if finished < full["runs"]:
        print(f"normexp-fit: only {finished} of {full['runs']} runs finished in the allowance: the verdict above "
              "is on the batch sizes that finished (see budget.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
