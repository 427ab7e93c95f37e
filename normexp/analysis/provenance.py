"""Where and how each run trained, from its record (normexp.record): the code commits, machines
and threads of its starts, how many starts it took, and its compute time."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from normexp import record
from normexp.analysis.machines import NOT_RECORDED, machine

COLUMNS = ["run", "code commit", "machine", "threads", "starts", "compute minutes"]


def _distinct(values: Iterable[object]) -> str:
    """The values that were recorded, each once in first-seen order, joined by "; "."""
    seen = dict.fromkeys(str(v) for v in values if v is not None)
    return "; ".join(seen) or NOT_RECORDED


def provenance_row(directory: Path) -> dict[str, Any]:
    """One run's row: short code commits, machines (`machines.machine`) and threads of its starts,
    the number of starts recorded (`not recorded` before starts were logged), and its compute
    minutes (None before it has ended)."""
    summary = record.read_summary(directory)
    logged = record.read_jsonl(directory / record.STARTS)
    starts = logged or ([summary] if summary else [])  # a run from before starts were logged: its summary's
    seconds = summary.get("compute_seconds") if summary else None
    return {"run": directory.name,
            "code commit": _distinct(str(s["git_commit"])[:7] for s in starts if s.get("git_commit")),
            "machine": _distinct(machine(s.get("device"), s.get("cpu_capability"), s.get("torch_version"))
                                 for s in starts),
            "threads": _distinct(s.get("threads") for s in starts),
            "starts": str(len(logged) or NOT_RECORDED),
            "compute minutes": None if seconds is None else seconds / 60}


def provenance_table(directories: Iterable[Path]) -> pd.DataFrame:
    """One row per run folder (`provenance_row`), in name order, and a last row `total` with the
    compute minutes of all of them."""
    rows = sorted((provenance_row(Path(d)) for d in directories), key=lambda row: row["run"])
    table = pd.DataFrame(rows, columns=COLUMNS)
    total = {**dict.fromkeys(COLUMNS, ""), "run": "total", "compute minutes": table["compute minutes"].sum(min_count=1)}
    return pd.concat([table, pd.DataFrame([total], columns=COLUMNS)], ignore_index=True)
