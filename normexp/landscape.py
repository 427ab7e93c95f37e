"""Statistics for sweeps of many norms (`norms`, `groups`, `fixes`): every norm against a baseline
at each batch size, and the shape of the GroupNorm group-count ablation (GN paper, Table 3).
These are reported, not a verdict: the claim's verdict is normexp.verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from normexp.verdict import welch_contrast

EXTREMES = ("ln", "in")  # G = 1 and G = C: the ends of the group axis; every `gn` setting is the middle


def _acc(runs: pd.DataFrame, **where: object) -> np.ndarray:
    mask = np.ones(len(runs), dtype=bool)
    for column, value in where.items():
        mask &= (runs[column] == value).to_numpy()
    return runs.loc[mask, "final_test_acc"].to_numpy(dtype=float)


def _row(estimate: dict[str, float], **cells: object) -> dict[str, object]:
    p_two = 2 * min(estimate["p_one_sided"], 1 - estimate["p_one_sided"])
    return {**cells, "difference": estimate["estimate"], "ci_low": estimate["ci_low"],
            "ci_high": estimate["ci_high"], "p_two_sided": p_two}


def versus(runs: pd.DataFrame, baseline: str, alpha: float) -> pd.DataFrame:
    """Each other norm's mean accuracy minus `baseline`'s at the same batch size, with its
    two-sided (1 - alpha) Welch CI and p; cells with fewer than 2 seeds on either side are left out."""
    rows = []
    for (norm, batch), cell in runs.groupby(["norm", "batch_size"]):
        base = _acc(runs, norm=baseline, batch_size=batch)
        acc = cell["final_test_acc"].to_numpy(dtype=float)
        if norm == baseline or len(base) < 2 or len(acc) < 2:
            continue
        rows.append(_row(welch_contrast([(1, acc), (-1, base)], alpha), norm=norm, batch_size=batch,
                         acc_mean=acc.mean(), n=len(acc), baseline_mean=base.mean(), n_baseline=len(base)))
    return pd.DataFrame(rows)


def batch_change(runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Each norm's mean accuracy at the smallest batch minus at the largest, with its Welch CI and p."""
    small, large = runs["batch_size"].min(), runs["batch_size"].max()
    rows = []
    for norm in sorted(runs["norm"].unique()):
        at_small, at_large = _acc(runs, norm=norm, batch_size=small), _acc(runs, norm=norm, batch_size=large)
        if len(at_small) >= 2 and len(at_large) >= 2:
            rows.append(_row(welch_contrast([(1, at_small), (-1, at_large)], alpha), norm=norm,
                             change=f"{large} -> {small}"))
    return pd.DataFrame(rows)


def group_shape(runs: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Per batch size, the paper's shape in two parts: (1) each extreme (LN, IN) is worse than the
    middle, i.e. all `gn` runs pooled (Welch, one-sided p < alpha); (2) the middle is flat: a one-way
    ANOVA across the `gn` settings finds no difference (p >= alpha), with the range of their means."""
    rows = []
    for batch, at_batch in runs.groupby("batch_size"):
        middle = at_batch[at_batch["norm_name"] == "gn"]
        settings = [g["final_test_acc"].to_numpy(dtype=float) for _, g in middle.groupby("norm")]
        pooled = middle["final_test_acc"].to_numpy(dtype=float)
        for extreme in EXTREMES:
            acc = _acc(at_batch, norm_name=extreme)
            if len(acc) < 2 or len(pooled) < 2:
                continue
            estimate = welch_contrast([(1, pooled), (-1, acc)], alpha)
            rows.append({"batch_size": batch, "check": f"middle minus {extreme}", "estimate": estimate["estimate"],
                         "ci_low": estimate["ci_low"], "ci_high": estimate["ci_high"],
                         "p": estimate["p_one_sided"], "shape_holds": estimate["p_one_sided"] < alpha})
        if len(settings) >= 2 and all(len(s) >= 2 for s in settings):
            means = [s.mean() for s in settings]
            anova = stats.f_oneway(*settings)
            rows.append({"batch_size": batch, "check": f"middle flat ({len(settings)} settings; range of means)",
                         "estimate": max(means) - min(means), "ci_low": np.nan, "ci_high": np.nan,
                         "p": float(anova.pvalue), "shape_holds": bool(anova.pvalue >= alpha)})
    return pd.DataFrame(rows)
