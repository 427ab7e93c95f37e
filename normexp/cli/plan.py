"""`normexp-plan OVERRIDES`: what `normexp-train -m OVERRIDES` would train (normexp.sweep.plan)."""

from __future__ import annotations

import sys
from typing import Optional

from normexp.sweep.plan import describe, sweep_plan


def main(argv: Optional[list[str]] = None) -> int:
    """`normexp-plan OVERRIDES`: print what `normexp-train -m OVERRIDES` would train."""
    from normexp.compose import check, checked_sweep_grid

    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print("usage: normexp-plan [OVERRIDE ...]  (the overrides of `normexp-train -m`, e.g. experiment=claim)")
        return 0
    points, problem = checked_sweep_grid(args)
    configs, problem = check(points) if problem is None else ([], problem)
    if problem:
        print(f"normexp-plan: {problem}", file=sys.stderr)
        return 2
    print(describe(*sweep_plan(args, points, configs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
