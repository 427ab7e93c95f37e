"""Where runs trained, as the analysis names it: the device, a CPU's capability and the torch
version (each changes a run's float rounding, which grows into seed-level noise)."""

from __future__ import annotations

import pandas as pd

NOT_RECORDED = "not recorded"


def machine(device: object, cpu_capability: object, torch_version: object) -> str:
    """`cpu (AVX2), torch 2.14.1` or `NVIDIA H200, torch 2.11.0`; a CPU run that did not record its
    capability is `cpu`, a run that recorded no device `not recorded`."""
    if not isinstance(device, str):
        return NOT_RECORDED
    capability = f" ({cpu_capability})" if device == "cpu" and isinstance(cpu_capability, str) else ""
    return f"{device}{capability}, torch {str(torch_version).split('+')[0]}"


def machines(runs: pd.DataFrame) -> dict[str, int]:
    """How many of `runs` trained on each machine (`machine`), in name order; empty where no run
    recorded its device and torch version."""
    if not {"device", "torch_version"} <= set(runs):
        return {}
    capabilities = runs["cpu_capability"] if "cpu_capability" in runs else [None] * len(runs)
    names = [machine(*row) for row in zip(runs["device"], capabilities, runs["torch_version"])]
    return {name: int(n) for name, n in sorted(pd.Series(names, dtype=object).value_counts().items())}
