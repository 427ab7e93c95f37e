"""The claim "GN holds its accuracy at batch sizes where BN degrades", judged by statistical tests
whose criteria are fixed before a sweep runs (defaults: conf/verdict/default.yaml).

Torch-free: only the standard library, numpy, pandas, scipy and yaml.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

DEFAULTS = Path(__file__).resolve().parent.parent / "conf" / "verdict" / "default.yaml"


class PoolingError(ValueError):
    """Runs that differ in more than the swept fields, or repeat a run, cannot be pooled."""


@dataclass(frozen=True)
class Criteria:
    """What the claim must show; the values live in conf/verdict/default.yaml (see its comments)."""

    bn: str
    gn: str
    reference_batch: int
    min_bn_drop: float
    max_gn_loss: float
    alpha: float
    require_parity: bool
    max_parity_gap: float


LIMITS = {"reference_batch": (lambda v: v >= 1, ">= 1"), "alpha": (lambda v: 0 < v < 1, "in (0, 1)"),
          "min_bn_drop": (lambda v: v >= 0, ">= 0"), "max_gn_loss": (lambda v: v > 0, "> 0"),
          "max_parity_gap": (lambda v: v > 0, "> 0")}


def _checked(name: str, value: Any) -> Any:
    """`value` as criterion `name`'s type (an int is a valid float), or ValueError naming the field."""
    kind = {f.name: f.type for f in fields(Criteria)}[name]
    if kind == "float" and type(value) is int:
        value = float(value)
    if type(value).__name__ != kind:
        raise ValueError(f"verdict criterion {name}={value!r} must be a {kind}")
    ok, allowed = LIMITS.get(name, (lambda v: True, ""))
    if not ok(value):
        raise ValueError(f"verdict criterion {name}={value!r} must be {allowed}")
    return value


def load_criteria(overrides: Mapping[str, Any] | None = None,
                  recorded: Mapping[str, Any] | None = None) -> tuple[Criteria, dict[str, str]]:
    """Criteria from the YAML defaults, then those recorded in the runs' configs, then `overrides`;
    also where each value came from ("default", "recorded" or "override")."""
    allowed = [f.name for f in fields(Criteria)]
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for origin, layer in (("default", yaml.safe_load(DEFAULTS.read_text())), ("recorded", recorded),
                          ("override", overrides)):
        for key, value in (layer or {}).items():
            if key not in allowed:
                raise ValueError(f"unknown verdict criterion {key!r} ({origin}); allowed: {', '.join(allowed)}")
            values[key], source[key] = value, origin
    missing = [name for name in allowed if name not in values]
    if missing:
        raise ValueError(f"{DEFAULTS} lacks verdict criteria: {', '.join(missing)}")
    return Criteria(**{key: _checked(key, value) for key, value in values.items()}), source


def welch_contrast(terms: Sequence[tuple[float, np.ndarray]], alpha: float) -> dict[str, float]:
    """Sum of coef x group mean with Welch-Satterthwaite df: estimate, SE, t, one-sided p (> 0),
    one-sided (1 - alpha) lower bound and two-sided (1 - alpha) CI."""
    parts = np.array([c * c * g.var(ddof=1) / len(g) for c, g in terms])
    estimate = float(sum(c * g.mean() for c, g in terms))
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(parts.sum())
        df = parts.sum() ** 2 / sum(p * p / (len(g) - 1) for p, (_, g) in zip(parts, terms))
        t = estimate / se
    half = stats.t.ppf(1 - alpha / 2, df) * se
    return {"estimate": estimate, "se": float(se), "df": float(df), "t": float(t),
            "p_one_sided": float(stats.t.sf(t, df)), "lower_bound": float(estimate - stats.t.ppf(1 - alpha, df) * se),
            "ci_low": float(estimate - half), "ci_high": float(estimate + half)}


def _trend(batch: np.ndarray, acc: np.ndarray, alpha: float) -> dict[str, float]:
    """OLS of accuracy on log2(batch): slope per doubling, its SE, the predicted change from the
    largest to the smallest batch and that change's one-sided (1 - alpha) lower bound."""
    x = np.log2(batch)
    sxx = float(((x - x.mean()) ** 2).sum())
    slope = float(((x - x.mean()) * (acc - acc.mean())).sum() / sxx)
    residual = acc - acc.mean() - slope * (x - x.mean())
    se = math.sqrt(float((residual ** 2).sum()) / (len(x) - 2) / sxx)
    span = float(x.min() - x.max())
    change = slope * span
    return {"slope_per_doubling": slope, "slope_se": se, "df": len(x) - 2, "change": change,
            "lower_bound": change - float(stats.t.ppf(1 - alpha, len(x) - 2)) * se * abs(span)}


def _missing(groups: Mapping[tuple[str, int], np.ndarray], c: Criteria, shared: list[int]) -> list[str]:
    """What the data lack for the checks, as sentences; empty when every check can be computed."""
    have = {tag: sorted(b for t, b in groups if t == tag) for tag in (c.bn, c.gn)}
    problems = [f"no finished {tag} runs" for tag in (c.bn, c.gn) if not have[tag]]
    problems += [f"no finished {tag} runs at reference batch {c.reference_batch}; have batches {have[tag]}"
                 for tag in (c.bn, c.gn) if have[tag] and c.reference_batch not in have[tag]]
    if not problems and not [b for b in shared if b < c.reference_batch]:
        problems.append(f"no batch size below reference batch {c.reference_batch} run with both {c.bn} and {c.gn}; "
                        f"have {c.bn} {have[c.bn]}, {c.gn} {have[c.gn]}")
    if not problems:
        for tag in (c.bn, c.gn):
            for batch in (shared[0], c.reference_batch):
                if len(groups[tag, batch]) < 2:
                    problems.append(f"only 1 finished {tag} run at batch {batch}; need 2 or more seeds")
    return problems


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping as {"dotted.key": leaf}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_poolable(runs: pd.DataFrame, varying: Sequence[str], cell: Sequence[str] = ("norm", "batch_size")) -> None:
    """Raise PoolingError unless the runs differ only in the `varying` fields (a dotted name covers
    everything below it) and in nothing else, including `data_digest`; within each `cell` (the
    columns a table pools seeds by) only in their seed; and no run is repeated."""
    def swept(key: str) -> bool:
        return any(key == v or key.startswith(v + ".") for v in varying)

    flat = [{k: v for k, v in _flat(identity).items() if not swept(k)} for identity in runs["identity"]]
    for row, digest in zip(flat, runs["data_digest"]):
        row["data_digest"] = digest
    problems = []
    for key in sorted(set().union(*flat)):
        counts = pd.Series([str(row.get(key, "<missing>")) for row in flat]).value_counts()
        if len(counts) > 1:
            problems.append(f"runs differ in {key}: " + ", ".join(f"{v} ({n} runs)" for v, n in counts.items()))
    if problems:
        problems[-1] += "; analyze them separately"
    problems += _mixed_cells(runs, list(cell))
    repeats = runs[runs.duplicated([*cell, "seed"], keep=False)]
    for key, group in repeats.groupby([*cell, "seed"]):
        problems.append(f"runs repeat {' '.join(map(str, key))}: {', '.join(map(str, group['run']))}; keep one")
    if problems:
        raise PoolingError("; ".join(problems))


def _mixed_cells(runs: pd.DataFrame, cell: list[str]) -> list[str]:
    """Tables pool a cell's runs as seeds of one setting: within a cell, runs may differ in their seed only."""
    problems = []
    for key, group in runs.groupby(cell):
        settings = [{k: v for k, v in _flat(identity).items() if k != "seed"} for identity in group["identity"]]
        differing = sorted(k for k in set().union(*settings) if len({str(s.get(k)) for s in settings}) > 1)
        if differing:
            where = ", ".join(f"{name}={value}" for name, value in zip(cell, key))
            problems.append(f"the runs at {where} differ in {', '.join(differing)}, not only in their seed; "
                            f"analyze them separately")
    return problems


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def verdict(runs: pd.DataFrame, criteria: Criteria) -> dict[str, Any]:
    """Judge the claim on finished runs (columns norm, batch_size, seed, final_test_acc), over the batch
    sizes both norms ran; JSON-ready (NaN -> None)."""
    c = criteria
    by_group = runs.groupby(["norm", "batch_size"])["final_test_acc"]
    groups = {(str(n), int(b)): g.to_numpy(float) for (n, b), g in by_group}
    shared = sorted({b for t, b in groups if t == c.bn} & {b for t, b in groups if t == c.gn})
    result: dict[str, Any] = {"criteria": asdict(c), "batch_sizes": shared, "reference_batch": c.reference_batch,
                              "smallest_batch": shared[0] if shared else None, "checks": {}, "holds": False}
    problems = _missing(groups, c, shared)
    if problems:
        return _plain({**result, "undecided": True, "reason": "; ".join(problems)})
    small, ref = shared[0], c.reference_batch
    bn_ref, bn_small, gn_ref, gn_small = (groups[t, b] for t in (c.bn, c.gn) for b in (ref, small))
    drop = welch_contrast([(1, bn_ref), (-1, bn_small)], c.alpha)
    gn_batches = np.concatenate([np.full(len(groups[c.gn, b]), b) for b in shared])
    trend = _trend(gn_batches, np.concatenate([groups[c.gn, b] for b in shared]), c.alpha)
    interaction = welch_contrast([(1, bn_ref), (-1, bn_small), (-1, gn_ref), (1, gn_small)], c.alpha)
    beats = welch_contrast([(1, gn_small), (-1, bn_small)], c.alpha)
    parity = welch_contrast([(1, bn_ref), (-1, gn_ref)], c.alpha)
    result["checks"] = {
        "bn_degrades": {"holds": drop["lower_bound"] > c.min_bn_drop, "bn_ref_mean": bn_ref.mean(),
                        "n_ref": len(bn_ref), "bn_small_mean": bn_small.mean(), "n_small": len(bn_small),
                        "drop": drop["estimate"], "se": drop["se"], "df": drop["df"],
                        "lower_bound": drop["lower_bound"], "threshold": c.min_bn_drop},
        "gn_holds": {"holds": trend["lower_bound"] > -c.max_gn_loss, **trend, "threshold": -c.max_gn_loss,
                     "largest_batch": shared[-1], "gn_mean_by_batch": {b: groups[c.gn, b].mean() for b in shared}},
        "interaction": {"holds": interaction["lower_bound"] > 0, "estimate": interaction["estimate"],
                        "se": interaction["se"], "df": interaction["df"],
                        "lower_bound": interaction["lower_bound"], "threshold": 0.0},
        "gn_beats_bn_at_smallest_batch": {
            "holds": beats["p_one_sided"] < c.alpha, "batch_size": small, "gn_mean": gn_small.mean(),
            "bn_mean": bn_small.mean(), "gap": beats["estimate"], "n_gn": len(gn_small), "n_bn": len(bn_small),
            "welch_t": beats["t"], "df": beats["df"], "p_value_one_sided": beats["p_one_sided"], "alpha": c.alpha},
        "parity": {"holds": -c.max_parity_gap < parity["ci_low"] and parity["ci_high"] < c.max_parity_gap,
                   "required": c.require_parity, "batch_size": ref, "bn_mean": bn_ref.mean(),
                   "gn_mean": gn_ref.mean(), "gap": parity["estimate"], "ci_low": parity["ci_low"],
                   "ci_high": parity["ci_high"], "max_gap": c.max_parity_gap},
    }
    result["holds"] = all(check["holds"] for name, check in result["checks"].items()
                          if name != "parity" or c.require_parity)
    return _plain({**result, "undecided": False, "reason": None})
