"""`normexp-compare`: analyzed run sets side by side.

  normexp-compare runs BEFORE AFTER            the same runs from two sweeps, paired by run name:
                                               accuracy per norm x batch size, after minus before with
                                               a paired 95 % CI, and compute time; runs in only one
                                               sweep are listed and left out
  normexp-compare verdicts LABEL=DIR [...]     the claim verdicts of several run sets (each DIR holds
                                               the verdict.json normexp-analyze wrote) as one table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PROG = "normexp-compare"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    what = parser.add_subparsers(dest="what", required=True)
    runs = what.add_parser("runs", help="the same runs from two sweeps, paired by run name")
    runs.add_argument("before", type=Path, metavar="BEFORE")
    runs.add_argument("after", type=Path, metavar="AFTER")
    verdicts = what.add_parser("verdicts", help="the verdicts of several analyzed run sets side by side")
    verdicts.add_argument("labelled", nargs="+", metavar="LABEL=DIR")
    return parser.parse_args(argv)


def compare_runs(before_dir: Path, after_dir: Path) -> str:
    """The paired table of the runs finished in both folders, their compute minutes and the unpaired."""
    from normexp.analysis.collect import load_runs
    from normexp.analysis.tables import compare_sweeps, unpaired_runs

    for folder in (before_dir, after_dir):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")
    before, after = (load_runs(folder).finished for folder in (before_dir, after_dir))
    table = compare_sweeps(before, after)
    if table.empty:
        raise ValueError("no finished run is in both sweeps: nothing to compare")
    lines = [table.to_markdown(index=False, floatfmt=".2f"),
             f"\nsum of job minutes (compute_seconds): before {table['minutes before'].sum():.1f}, "
             f"after {table['minutes after'].sum():.1f}"]
    for side, names in unpaired_runs(before, after).items():
        if names:
            lines.append(f"{side}, left out: {len(names)} run(s): {', '.join(names[:6])}"
                         f"{', ...' if len(names) > 6 else ''}")
    return "\n".join(lines)


def compare_verdicts(labelled: list[str]) -> str:
    """The verdicts of LABEL=DIR run sets as one markdown table."""
    from normexp.analysis.verdict_text import verdict_table

    pairs = [arg.partition("=") for arg in labelled]
    if any(not sep or not label for label, sep, _ in pairs):
        raise ValueError("each argument is LABEL=DIR (the DIR normexp-analyze wrote verdict.json into)")
    labels = [label for label, _, _ in pairs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"each LABEL must be different; got {', '.join(labels)}")
    verdicts: dict[str, Any] = {}
    for label, _, folder in pairs:
        path = Path(folder) / "verdict.json"
        try:
            verdicts[label] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read {path} ({error}); run normexp-analyze {folder} first") from error
    try:
        return verdict_table(verdicts).to_markdown()
    except KeyError as error:
        raise ValueError(f"a verdict.json lacks the field {error}; rerun normexp-analyze on it") from error


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(compare_runs(args.before, args.after) if args.what == "runs" else compare_verdicts(args.labelled))
    except (ValueError, FileNotFoundError) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
