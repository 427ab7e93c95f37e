"""Tables and the claim verdict computed from finished runs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from scipy import stats


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy mean, std and n per norm x batch size."""
    grouped = runs.groupby(["norm", "batch_size"])["final_test_acc"]
    table = grouped.agg(acc_mean="mean", acc_std="std", n="count").reset_index()
    table["acc_std"] = table["acc_std"].fillna(0.0)
    return table


def compare_sweeps(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Two sweeps of the same runs (e.g. a rerun with other code): accuracy mean +- std per norm x
    batch size in each, the largest per-seed difference, and the jobs' compute minutes (runs that
    were packed together share one job's time)."""
    def minutes(runs: pd.DataFrame) -> float:
        packs = runs["pack_size"].fillna(1) if "pack_size" in runs else 1
        return float((runs["wall_seconds"] / packs).sum() / 60)

    rows = []
    for (norm, batch), new in after.groupby(["norm", "batch_size"]):
        old = before[(before["norm"] == norm) & (before["batch_size"] == batch)]
        diff = (new.set_index("seed")["final_test_acc"] - old.set_index("seed")["final_test_acc"]).abs()
        rows.append({
            "norm": norm, "batch": batch,
            "before acc %": f"{old['final_test_acc'].mean():.2f} ± {old['final_test_acc'].std():.2f}",
            "after acc %": f"{new['final_test_acc'].mean():.2f} ± {new['final_test_acc'].std():.2f}",
            "largest per-seed difference": diff.max(), "minutes before": minutes(old), "minutes after": minutes(new),
        })
    return pd.DataFrame(rows)


def error_table(runs: pd.DataFrame, bn: str = "bn", gn: str = "gn8") -> pd.DataFrame:
    """GN-paper style: test error (%) by batch size (largest first) for BN and GN, and BN - GN."""
    acc = accuracy_table(runs).pivot(index="norm", columns="batch_size", values="acc_mean")
    acc = acc[sorted(acc.columns, reverse=True)]
    error = 100.0 - acc.loc[[n for n in (bn, gn) if n in acc.index]]
    if bn in error.index and gn in error.index:
        error.loc[f"{bn} - {gn}"] = error.loc[bn] - error.loc[gn]
    error.columns = [f"batch {b}" for b in error.columns]
    return error.round(2)


def convergence_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean epochs to reach each accuracy threshold (over seeds that reached it) and final train loss."""
    threshold_columns = sorted((c for c in runs.columns if c.startswith("epochs_to_")),
                               key=lambda c: float(c.removeprefix("epochs_to_")))
    grouped = runs.groupby(["norm", "batch_size"])
    table = grouped[threshold_columns].mean() if threshold_columns else pd.DataFrame(index=grouped.size().index)
    for column in threshold_columns:
        table[f"reached_{column.removeprefix('epochs_to_')}"] = grouped[column].count()
    table["final_train_loss"] = grouped["final_train_loss"].mean()
    return table.reset_index().round(3)


@dataclass
class Criteria:
    """What 'GN holds its accuracy where BN degrades' must mean for the verdict to be true."""

    bn: str = "bn"
    gn: str = "gn8"
    min_bn_drop: float = 2.0  # BN at the smallest batch is at least this many points below its best
    max_gn_range: float = 2.0  # GN's mean accuracy varies by at most this many points across batches
    alpha: float = 0.05  # GN > BN at the smallest batch: one-sided Welch t-test p-value below this


def verdict(runs: pd.DataFrame, criteria: Criteria) -> dict[str, Any]:
    """Evaluate the claim on finished runs; every check reports its numbers and can fail."""
    table = accuracy_table(runs)
    bn = table[table["norm"] == criteria.bn].set_index("batch_size")
    gn = table[table["norm"] == criteria.gn].set_index("batch_size")
    shared = sorted(set(bn.index) & set(gn.index))
    result: dict[str, Any] = {"criteria": asdict(criteria), "checks": {}, "holds": False}
    if len(shared) < 2:
        result["reason"] = (f"need finished runs of {criteria.bn} and {criteria.gn} at two or more common batch "
                            f"sizes; have {criteria.bn}: {sorted(bn.index)}, {criteria.gn}: {sorted(gn.index)}")
        return result
    smallest = shared[0]
    best_batch = int(bn.loc[shared, "acc_mean"].idxmax())
    drop = float(bn.loc[best_batch, "acc_mean"] - bn.loc[smallest, "acc_mean"])
    gn_range = float(gn.loc[shared, "acc_mean"].max() - gn.loc[shared, "acc_mean"].min())
    bn_small = runs[(runs["norm"] == criteria.bn) & (runs["batch_size"] == smallest)]["final_test_acc"]
    gn_small = runs[(runs["norm"] == criteria.gn) & (runs["batch_size"] == smallest)]["final_test_acc"]
    if min(len(bn_small), len(gn_small)) >= 2:
        test = stats.ttest_ind(gn_small, bn_small, equal_var=False, alternative="greater")
        t_stat, p_value = float(test.statistic), float(test.pvalue)
    else:
        t_stat, p_value = math.nan, math.nan
    result["checks"] = {
        "bn_degrades": {
            "holds": drop >= criteria.min_bn_drop,
            "bn_best_batch": best_batch,
            "bn_best_acc": float(bn.loc[best_batch, "acc_mean"]),
            "bn_smallest_batch_acc": float(bn.loc[smallest, "acc_mean"]),
            "drop": drop,
            "required_drop": criteria.min_bn_drop,
        },
        "gn_holds": {
            "holds": gn_range <= criteria.max_gn_range,
            "gn_range": gn_range,
            "allowed_range": criteria.max_gn_range,
            "gn_acc_by_batch": {int(b): float(gn.loc[b, "acc_mean"]) for b in shared},
        },
        "gn_beats_bn_at_smallest_batch": {
            "holds": bool(p_value < criteria.alpha),
            "batch_size": smallest,
            "gn_mean": float(gn_small.mean()),
            "bn_mean": float(bn_small.mean()),
            "gap": float(gn_small.mean() - bn_small.mean()),
            "n_gn": int(len(gn_small)),
            "n_bn": int(len(bn_small)),
            "welch_t": t_stat,
            "p_value_one_sided": p_value,
            "alpha": criteria.alpha,
        },
    }
    result["batch_sizes"] = shared
    result["holds"] = all(check["holds"] for check in result["checks"].values())
    return result


def describe_verdict(result: dict[str, Any]) -> str:
    """A few human-readable lines for the console and the README."""
    if not result["checks"]:
        return f"claim verdict: UNDECIDED - {result['reason']}"
    c = result["criteria"]
    d, g, t = (result["checks"][k] for k in ("bn_degrades", "gn_holds", "gn_beats_bn_at_smallest_batch"))
    mark = {True: "yes", False: "NO"}
    return "\n".join([
        f"claim verdict: {'HOLDS' if result['holds'] else 'DOES NOT HOLD'} ({c['gn']} vs {c['bn']}, batch sizes "
        f"{', '.join(map(str, result['batch_sizes']))})",
        f"  [{mark[d['holds']]}] {c['bn']} degrades: {d['bn_smallest_batch_acc']:.2f}% at batch {t['batch_size']} vs "
        f"{d['bn_best_acc']:.2f}% at batch {d['bn_best_batch']} (drop {d['drop']:.2f} >= {d['required_drop']:g})",
        f"  [{mark[g['holds']]}] {c['gn']} holds: range across batch sizes {g['gn_range']:.2f} <= {g['allowed_range']:g} points",
        f"  [{mark[t['holds']]}] {c['gn']} beats {c['bn']} at batch {t['batch_size']}: {t['gn_mean']:.2f}% vs "
        f"{t['bn_mean']:.2f}% (gap {t['gap']:+.2f}; Welch t={t['welch_t']:.2f}, one-sided p={t['p_value_one_sided']:.4f} "
        f"< {t['alpha']:g}; n={t['n_gn']}/{t['n_bn']})",
    ])
