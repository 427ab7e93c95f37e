"""The claim verdicts of several analyzed run sets side by side, as a markdown table (e.g. whether two
disjoint seed sets reach the same decision).

Usage: python scripts/compare_verdicts.py LABEL=RESULTS_DIR [LABEL=RESULTS_DIR ...]
       (each RESULTS_DIR holds the verdict.json that normexp-analyze wrote)
"""

import json
import sys
from pathlib import Path

from normexp.analysis.verdict_text import verdict_table

if __name__ == "__main__":
    pairs = [arg.partition("=") for arg in sys.argv[1:]]
    if not pairs or any(not sep or not label for label, sep, _ in pairs):
        sys.exit(__doc__.strip().split("\n\n")[-1])
    labels = [label for label, _, _ in pairs]
    if len(set(labels)) < len(labels):
        sys.exit(f"compare_verdicts: each LABEL must be different; got {', '.join(labels)}")
    verdicts = {}
    for label, _, folder in pairs:
        path = Path(folder) / "verdict.json"
        try:
            verdicts[label] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            sys.exit(f"compare_verdicts: cannot read {path} ({error}); run normexp-analyze {folder} first")
    try:
        print(verdict_table(verdicts).to_markdown())
    except KeyError as error:
        sys.exit(f"compare_verdicts: a verdict.json lacks the field {error}; rerun normexp-analyze on it")
