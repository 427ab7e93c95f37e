"""Statistics for sweeps of many norms (`norms`, `groups`, `fixes`): every norm against a baseline
at each batch size, each norm across batch sizes, and the shape of the GroupNorm group-count
ablation (GN paper, Table 3). These are reported, not a verdict: the claim's verdict is
normexp.analysis.verdict. Cells with fewer than 2 seeds on either side are left out (Welch needs 2)."""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from normexp.analysis.machines import machines
from normexp.analysis.verdict import welch_contrast

EXTREMES = ("ln", "in")  # G = 1 and G = C, the ends of the group axis; the `gn` settings are the middle
VERSUS_COLUMNS = ["norm", "batch_size", "acc_mean", "n", "baseline_mean", "n_baseline", "difference",
                  "ci_low", "ci_high", "p_two_sided", "p_holm", "trained_on", "baseline_trained_on"]
CHANGE_COLUMNS = ["norm", "change", "acc_largest", "n_largest", "acc_smallest", "n_smallest", "difference",
                  "ci_low", "ci_high", "p_two_sided"]
SHAPE_COLUMNS = ["batch_size", "check", "test", "estimate", "low", "high", "holds"]
PAIRED_COLUMNS = ["norm", "batch_size", "pairs", "baseline_mean", "baseline_sd", "other_mean", "difference",
                  "ci_low", "ci_high", "largest_pair_difference", "within_seed_noise"]


def _final_acc(runs: pd.DataFrame, **where: object) -> np.ndarray:
    mask = np.ones(len(runs), dtype=bool)
    for column, value in where.items():
        mask &= (runs[column] == value).to_numpy()
    return runs.loc[mask, "final_test_acc"].to_numpy(dtype=float)


def trained_on(cell: pd.DataFrame) -> str:
    """Where a cell's runs trained: each machine among them (`cpu (AVX2), torch 2.14.1`), so a
    comparison across machines shows as such."""
    return "; ".join(machines(cell))


def _two_sided(estimate: dict[str, float]) -> dict[str, float]:
    return {"difference": estimate["estimate"], "ci_low": estimate["ci_low"], "ci_high": estimate["ci_high"],
            "p_two_sided": 2 * min(estimate["p_one_sided"], 1 - estimate["p_one_sided"])}


def caption(statistic: Callable[..., pd.DataFrame], baseline: str = "") -> str:
    """What a table of `statistic` holds, for a report: its docstring on one line, with `baseline` named."""
    return " ".join((statistic.__doc__ or "").split()).replace("`baseline`", baseline)


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjusted p-values for one family of comparisons (controls the family-wise
    error rate): the k-th smallest of m is max over the first k of (m - j + 1) p_(j), at most 1."""
    order = p.dropna().sort_values()  # a comparison without a p-value is not one of the family
    scaled = (len(order) - np.arange(len(order))) * order.to_numpy()
    return pd.Series(np.minimum(np.maximum.accumulate(scaled), 1.0), index=order.index).reindex(p.index)


def versus(runs: pd.DataFrame, baseline: str, alpha: float) -> pd.DataFrame:
    """Each other norm's mean accuracy minus `baseline`'s at the same batch size, with its
    two-sided (1 - alpha) Welch CI, p uncorrected, p Holm-adjusted over the comparisons at
    that batch size, and where each side trained (device, CPU capability and torch: a difference
    across machines holds float rounding that grows into seed-level noise)."""
    rows = []
    for (norm, batch), cell in runs.groupby(["norm", "batch_size"]):
        base = _final_acc(runs, norm=baseline, batch_size=batch)
        acc = cell["final_test_acc"].to_numpy(dtype=float)
        if norm != baseline and len(base) >= 2 and len(acc) >= 2:
            rows.append({"norm": norm, "batch_size": batch, "acc_mean": acc.mean(), "n": len(acc),
                         "baseline_mean": base.mean(), "n_baseline": len(base),
                         **_two_sided(welch_contrast([(1, acc), (-1, base)], alpha)),
                         "trained_on": trained_on(cell),
                         "baseline_trained_on": trained_on(runs[(runs["norm"] == baseline)
                                                                & (runs["batch_size"] == batch)])})
    table = pd.DataFrame(rows, columns=VERSUS_COLUMNS)
    table["p_holm"] = table.groupby("batch_size")["p_two_sided"].transform(holm) if rows else []
    return table


def batch_change(runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Each norm's mean accuracy at its own smallest batch minus at its own largest, with its Welch CI and p."""
    rows = []
    for norm, of_norm in runs.groupby("norm"):
        small, large = of_norm["batch_size"].min(), of_norm["batch_size"].max()
        at_small, at_large = _final_acc(of_norm, batch_size=small), _final_acc(of_norm, batch_size=large)
        if small < large and len(at_small) >= 2 and len(at_large) >= 2:
            rows.append({"norm": norm, "change": f"{large} -> {small}", "acc_largest": at_large.mean(),
                         "n_largest": len(at_large), "acc_smallest": at_small.mean(), "n_smallest": len(at_small),
                         **_two_sided(welch_contrast([(1, at_small), (-1, at_large)], alpha))})
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def group_shape(runs: pd.DataFrame, alpha: float, max_gap: float) -> pd.DataFrame:
    """Per batch size, the paper's Table 3 shape in two parts. (1) Each extreme (LN, IN) is worse
    than the middle: the mean of the `gn` settings' means (each setting weighted equally) minus the
    extreme's, one-sided (1 - alpha) Welch lower bound > 0. (2) The middle is flat: every pair of
    `gn` settings is equivalent within +-max_gap (two one-sided tests: the pair's (1 - 2 alpha) CI
    inside +-max_gap); the row shows the pair whose CI reaches farthest."""
    rows = []
    for batch, at_batch in runs.groupby("batch_size"):
        middle = {norm: g["final_test_acc"].to_numpy(dtype=float)
                  for norm, g in at_batch[at_batch["norm_name"] == "gn"].groupby("norm") if len(g) >= 2}
        for extreme in EXTREMES:
            acc = _final_acc(at_batch, norm_name=extreme)
            if len(acc) >= 2 and middle:
                terms = [(1 / len(middle), setting) for setting in middle.values()] + [(-1, acc)]
                estimate = welch_contrast(terms, alpha)
                rows.append({"batch_size": batch, "check": f"middle minus {extreme}",
                             "test": f"one-sided {1 - alpha:.0%} lower bound > 0", "estimate": estimate["estimate"],
                             "low": estimate["lower_bound"], "high": np.nan, "holds": estimate["lower_bound"] > 0})
        pairs = [((a, b), welch_contrast([(1, middle[a]), (-1, middle[b])], 2 * alpha))
                 for a, b in combinations(sorted(middle), 2)]
        if pairs:
            (a, b), worst = max(pairs, key=lambda pair: max(abs(pair[1]["ci_low"]), abs(pair[1]["ci_high"])))
            rows.append({"batch_size": batch, "check": f"middle flat ({len(middle)} settings; widest pair {a} - {b})",
                         "test": f"every pair's {1 - 2 * alpha:.0%} CI within ±{max_gap:g}",
                         "estimate": worst["estimate"], "low": worst["ci_low"], "high": worst["ci_high"],
                         "holds": max(abs(worst["ci_low"]), abs(worst["ci_high"])) < max_gap})
    return pd.DataFrame(rows, columns=SHAPE_COLUMNS)


def setting_values(runs: pd.DataFrame, axis: str) -> list[Any]:
    """The values `axis` takes among `runs`, the default first ("unset": null, left out of the
    identity), then numbers in numeric order, then the rest by name."""
    return sorted(set(runs[axis]), key=lambda v: (v != "unset", not isinstance(v, (int, float)),
                                                  v if isinstance(v, (int, float)) else str(v)))


def paired_setting(runs: pd.DataFrame, axis: str, alpha: float) -> pd.DataFrame:
    """For a setting swept at two values (the first is the baseline: its default if one is unset),
    each norm x batch cell's other value minus the baseline, paired by seed (a seed's two runs share
    initialization and data order): the mean difference with its paired-t (1 - alpha) CI, the
    baseline's seed SD, the largest pair's difference, and whether the difference is within seed
    noise (the CI holds 0 and the mean difference is smaller than the baseline's seed SD). Cells
    with fewer than 2 pairs are left out."""
    values = setting_values(runs, axis)
    if len(values) != 2:
        raise ValueError(f"a paired comparison needs {axis} at two values, not {len(values)}")
    baseline, other = values
    rows = []
    for (norm, batch), cell in runs.groupby(["norm", "batch_size"]):
        sides = [cell[cell[axis] == value].set_index("seed")["final_test_acc"] for value in (baseline, other)]
        seeds = sorted(set(sides[0].index) & set(sides[1].index))
        if len(seeds) < 2:
            continue
        base, alt = (side.loc[seeds].to_numpy(dtype=float) for side in sides)
        low, high = stats.ttest_rel(alt, base).confidence_interval(1 - alpha)
        difference, spread = float((alt - base).mean()), float(base.std(ddof=1))
        rows.append({"norm": norm, "batch_size": batch, "pairs": len(seeds), "baseline_mean": base.mean(),
                     "baseline_sd": spread, "other_mean": alt.mean(), "difference": difference,
                     "ci_low": low, "ci_high": high, "largest_pair_difference": float(np.abs(alt - base).max()),
                     "within_seed_noise": bool(low <= 0 <= high and abs(difference) < spread)})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS).rename(
        columns={"baseline_mean": f"{axis}={baseline} mean", "other_mean": f"{axis}={other} mean",
                 "baseline_sd": f"{axis}={baseline} sd"})
