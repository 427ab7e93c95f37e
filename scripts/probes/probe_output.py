"""What a probe leaves behind: its Markdown answer headed by the command that made it and the
commit of the code it ran, printed, and with an output folder also written there beside the table
as CSV, atomically."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from normexp.files import atomic

CODE = ["normexp", "scripts", "conf", "hydra_plugins", "pyproject.toml"]  # what a probe's numbers can depend on


def code_version() -> str:
    """The repository's commit, and whether tracked code (CODE; results aside) differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=Path(__file__).parents[2], capture_output=True, text=True,
                              check=True).stdout.strip()
    changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE)
    return f"`{git('rev-parse', '--short', 'HEAD')}`" + (" with uncommitted changes" if changed else "")


def publish(markdown: str, table: pd.DataFrame, out: Path | None, name: str) -> None:
    """Print `markdown` after the command line and code version; with `out`, write it as `name`.md
    and `table` as `name`.csv."""
    text = f"Command: `python {' '.join(map(shlex.quote, sys.argv))}`\n\nCode: {code_version()}\n\n{markdown}"
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / f"{name}.md", text)
        atomic.write_text(out / f"{name}.csv", table.to_csv(index=False, float_format="%.4f"))
