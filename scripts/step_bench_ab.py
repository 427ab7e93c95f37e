"""The same step bench on two checkouts of normexp, interleaved, and the after/before ratio.

Runs `scripts/step_bench.py` with the same arguments from checkout BEFORE and checkout AFTER (each
with its own code on PYTHONPATH), alternating for --rounds rounds so that a change in the machine's
load falls on both, and prints each round's ms per optimizer step (eager and device step) and the
ratio of the medians. A ratio is only meaningful on quiet cores: run it with nothing else training.

Run:  python scripts/step_bench_ab.py --before ../normexp_old --after . -- --project claim --norms bn \\
          --batch-sizes 2 --steps 8 --device cpu data.test_subset=100 runtime.threads=1
(`git worktree add ../normexp_old <commit>` makes a BEFORE checkout.)
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
from pathlib import Path

TIMES = ("eager ms/step", "device ms/step")


def bench(checkout: Path, bench_args: list[str]) -> dict[str, float]:
    """One step bench in `checkout`: its first cell's ms per step, eager and device step."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "scripts/step_bench.py", *bench_args], cwd=checkout, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"step_bench_ab: the bench failed in {checkout} (exit {done.returncode}): "
                 f"{done.stderr.strip().splitlines()[-1:]}")
    row = next(ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith("{"))
    return {name: float(row[name]) for name in TIMES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--after", type=Path, default=Path("."), help="the checkout under test (default .)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: step_bench.py's arguments")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    times: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for round_no in range(1, args.rounds + 1):
        for side, checkout in sides.items():
            times[side].append(bench(checkout, bench_args))
            print(f"round {round_no} {side:6}: " + ", ".join(f"{k} {v:.2f}" for k, v in times[side][-1].items()),
                  flush=True)
    for name in TIMES:
        before, after = (statistics.median(t[name] for t in times[side]) for side in sides)
        print(f"{name}: median before {before:.2f}, after {after:.2f}, after/before {after / before:.3f}")


if __name__ == "__main__":
    main()
