"""What a probe leaves behind: its Markdown answer headed by the command that made it, printed, and
with an output folder also written there beside the table as CSV, atomically."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pandas as pd

from normexp.files import atomic


def publish(markdown: str, table: pd.DataFrame, out: Path | None, name: str) -> None:
    """Print `markdown` after the command line; with `out`, write it as `name`.md and `table` as `name`.csv."""
    text = f"Command: `python {' '.join(map(shlex.quote, sys.argv))}`\n\n{markdown}"
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / f"{name}.md", text)
        atomic.write_text(out / f"{name}.csv", table.to_csv(index=False, float_format="%.4f"))
