"""The parity screen's table and figure: which change against `converged` moves the BN - GN gap.

Usage: python scripts/parity_screen.py [--screen results/parity_screen] [--reference results/converged]
                                       [--out results/parity_screen]
Writes tables/screen.md (.csv) and figures/gap_by_arm.png under --out and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normexp.analysis import screen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", type=Path, default=Path("results/parity_screen"))
    parser.add_argument("--reference", type=Path, default=Path("results/converged"))
    parser.add_argument("--out", type=Path, default=None, help="default: --screen")
    args = parser.parse_args()
    try:
        screen.write(args.screen, args.reference, out := args.out or args.screen)
    except ValueError as error:
        print(f"parity_screen: {error}", file=sys.stderr)
        sys.exit(2)
    print((out / "tables" / "screen.md").read_text(), end="")


if __name__ == "__main__":
    main()
