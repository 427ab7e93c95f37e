"""Compare two sweeps of the same runs (paired by run name): accuracy per norm x batch size, after
minus before with a paired 95 % CI, and compute time. Runs in only one sweep are listed and left out.

Usage: python scripts/compare_sweeps.py BEFORE_RESULTS_DIR AFTER_RESULTS_DIR
"""

import sys

from normexp.analysis.collect import load_runs
from normexp.analysis.tables import compare_sweeps, unpaired_runs

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    before, after = (load_runs(path).finished for path in sys.argv[1:3])
    table = compare_sweeps(before, after)
    if table.empty:
        sys.exit("no finished run is in both sweeps: nothing to compare")
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print(f"\nsum of job minutes (compute_seconds): before {table['minutes before'].sum():.1f}, "
          f"after {table['minutes after'].sum():.1f}")
    for side, runs in unpaired_runs(before, after).items():
        if runs:
            print(f"{side}, left out: {len(runs)} run(s): {', '.join(runs[:6])}{', ...' if len(runs) > 6 else ''}")
