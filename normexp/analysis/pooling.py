"""What runs may be pooled, and why not: a run's settings as read from its identity, the swept
settings as analysis axes, norm tags that keep differently set norms apart, and the check that runs
pooled as seeds differ in nothing else.

Torch-free: only the standard library and pandas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd


class PoolingError(ValueError):
    """Runs that differ in more than the swept fields, or repeat a run, cannot be pooled."""


def flat_settings(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping (a run's identity) as {"dotted.key": leaf}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_axes(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """`runs` with a column per swept setting in `axes` (dotted names of single settings, e.g.
    trainer.epochs), read from each run's identity; a setting a run lacks (null, left out of its
    identity, or a norm without it) reads "unset", a list a tuple. PoolingError for a group."""
    flat = [flat_settings(identity) for identity in runs["identity"]]
    for axis in axes:
        if any(key.startswith(axis + ".") for row in flat for key in row):
            raise PoolingError(f"--vary {axis} names a group of settings; name one setting of it as an axis "
                               f"(e.g. {next(k for row in flat for k in row if k.startswith(axis + '.'))})")
    value = lambda v: "unset" if v is None else tuple(v) if isinstance(v, list) else v  # noqa: E731
    return runs.assign(**{axis: [value(row.get(axis)) for row in flat] for axis in axes})


def tag_norm_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` whose norm tag also names the norm settings that differ among runs of one tag (a
    swept setting the tag does not show, e.g. `brn rmax=2.0` beside `brn rmax=3.0`), so that tables
    keep them apart; tags that do not share settings are left as they are."""
    settings = [flat_settings(identity["norm"]) for identity in runs["identity"]]
    tags = list(runs["norm"])
    for tag in set(tags):
        rows = [i for i, t in enumerate(tags) if t == tag]
        varying = sorted(k for k in set().union(*(settings[i] for i in rows))
                         if len({str(settings[i].get(k)) for i in rows}) > 1)
        for i in rows:
            if varying:
                tags[i] = tag + "".join(f" {k}={settings[i].get(k)}" for k in varying)
    return runs.assign(norm=tags)


def check_poolable(runs: pd.DataFrame, varying: Sequence[str], cell: Sequence[str] = ("norm", "batch_size")) -> None:
    """Raise PoolingError unless the runs differ only in the `varying` fields (a dotted name covers
    everything below it) and in nothing else, including `data_digest`; within each `cell` (the
    columns a table pools seeds by) only in their seed; and no run is repeated."""
    def swept(key: str) -> bool:
        return any(key == v or key.startswith(v + ".") for v in varying)

    flat = [{k: v for k, v in flat_settings(identity).items() if not swept(k)} for identity in runs["identity"]]
    for row, digest in zip(flat, runs["data_digest"]):
        row["data_digest"] = digest
    problems, differing = [], []
    for key in sorted(set().union(*flat)):
        counts = pd.Series([str(row.get(key, "<missing>")) for row in flat]).value_counts()
        if len(counts) > 1:
            differing.append(key)
            problems.append(f"runs differ in {key}: " + ", ".join(f"{v} ({n} runs)" for v, n in counts.items()))
    if problems:
        problems[-1] += ("; analyze them separately, or along it: "
                         + " ".join(f"--vary {key}" for key in differing if key != "data_digest"))
    problems += _mixed_cells(runs, list(cell))
    repeats = runs[runs.duplicated([*cell, "seed"], keep=False)]
    for key, group in repeats.groupby([*cell, "seed"]):
        where = group["path"] if "path" in group else group["run"]
        problems.append(f"runs repeat {' '.join(map(str, key))}: {', '.join(map(str, where))}; keep one "
                        f"(move the others out of the results folders, or analyze those folders apart)")
    if problems:
        raise PoolingError("; ".join(problems))


def _mixed_cells(runs: pd.DataFrame, cell: list[str]) -> list[str]:
    """Tables pool a cell's runs as seeds of one setting: within a cell, runs may differ in their seed only."""
    problems = []
    for key, group in runs.groupby(cell):
        settings = [{k: v for k, v in flat_settings(identity).items() if k != "seed"} for identity in group["identity"]]
        differing = sorted(k for k in set().union(*settings) if len({str(s.get(k)) for s in settings}) > 1)
        if differing:
            where = ", ".join(f"{name}={value}" for name, value in zip(cell, key))
            problems.append(f"the runs at {where} differ in {', '.join(differing)}, not only in their seed; "
                            f"analyze them separately")
    return problems
