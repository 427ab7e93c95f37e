"""Compare two sweeps of the same runs: accuracy per norm x batch size and compute time.

Usage: python scripts/compare_sweeps.py BEFORE_RESULTS_DIR AFTER_RESULTS_DIR
"""

import sys

from normexp.analysis import compare_sweeps
from normexp.collect import load_runs

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1])
    before, after = (load_runs(path).finished for path in sys.argv[1:3])
    table = compare_sweeps(before, after)
    print(table.to_markdown(index=False, floatfmt=".2f"))
    print(f"\nsum of job minutes (compute_seconds): before {table['minutes before'].sum():.1f}, "
          f"after {table['minutes after'].sum():.1f}")
