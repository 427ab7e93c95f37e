"""Why BN fails at small batch: its accuracy under three evaluations of the same weights and under
FrozenBN, against the statistics batch (normexp.train.bn_evaluation; Wu & Johnson 2021).

`statistics_table`: per norm x batch size, the final test accuracy with the running averages
(population), precise population statistics and batch statistics, mean, std and n.
`decomposition`: at each batch size below the reference, BN's loss against the reference batch
(population statistics at both) and how much of it each remedy recovers, with (1 - alpha) CIs:
the two evaluations paired by run (the same weights), FrozenBN paired by seed (it trains as BN
until its switch), and what the best of them leaves (noisy training, unpaired Welch).
"""

from __future__ import annotations

import pandas as pd
from scipy import stats

EVALUATIONS = {"population": "final_test_acc", "precise": "final_test_acc_precise", "batch statistics": "final_test_acc_batch"}


def evaluated_alike(runs: pd.DataFrame) -> None:
    """Raise ValueError if the runs that carry the extra evaluations recorded different `evaluation` settings."""
    settings = runs.loc[runs["final_test_acc_batch"].notna(), "evaluation"].dropna().unique() \
        if "final_test_acc_batch" in runs else []
    if len(settings) > 1:
        raise ValueError(f"the runs were evaluated with different `evaluation` settings ({'; '.join(settings)}); "
                         f"analyze them separately")


def statistics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and n of each evaluation's final test accuracy per norm x batch size (the norms and
    cells that carry it)."""
    rows = []
    for (norm, batch), cell in runs.groupby(["norm", "batch_size"]):
        row = {"norm": norm, "batch": batch, "devices": cell["devices"].iloc[0], "n": len(cell)}
        for name, column in EVALUATIONS.items():
            values = cell[column].dropna() if column in cell else pd.Series(dtype=float)
            row[name] = f"{values.mean():.2f} ± {values.std():.2f}" if len(values) > 1 else (
                f"{values.iloc[0]:.2f}" if len(values) else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(difference: pd.Series, alpha: float) -> tuple[float, float, float]:
    if len(difference) < 2:
        return float(difference.mean()), float("nan"), float("nan")
    low, high = stats.ttest_1samp(difference, 0.0).confidence_interval(1 - alpha)
    return float(difference.mean()), float(low), float(high)


def _welch(a: pd.Series, b: pd.Series, alpha: float) -> tuple[float, float, float]:
    if len(a) < 2 or len(b) < 2:
        return float(a.mean() - b.mean()), float("nan"), float("nan")
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(1 - alpha)
    return float(a.mean() - b.mean()), float(low), float(high)


def decomposition(runs: pd.DataFrame, bn: str, frozen: str | None, reference: int, alpha: float) -> pd.DataFrame:
    """Per batch size below `reference`: BN's loss, population(reference) - population(b), and the
    accuracy each remedy adds at b: precise and batch-statistics evaluation (minus population, paired
    by run), FrozenBN (`frozen` norm's population minus BN's, paired by seed), and the remainder,
    population(reference) - the best remedy's accuracy at b. Each as mean [CI low, CI high]."""
    bn_runs = runs[runs["norm"] == bn]
    ref = bn_runs[bn_runs["batch_size"] == reference]["final_test_acc"]
    rows = []
    for batch, cell in bn_runs[bn_runs["batch_size"] < reference].groupby("batch_size"):
        row = {"batch": batch, "n": len(cell), "BN loss vs reference": _welch(ref, cell["final_test_acc"], alpha)}
        best = ("population", cell["final_test_acc"])
        for name in ("precise", "batch statistics"):
            column = EVALUATIONS[name]
            if column in cell and cell[column].notna().all():
                row[f"{name} recovers"] = _ci(cell[column] - cell["final_test_acc"], alpha)
                best = max(best, (name, cell[column]), key=lambda item: item[1].mean())
        if frozen is not None:
            frozen_cell = runs[(runs["norm"] == frozen) & (runs["batch_size"] == batch)].set_index("seed")
            shared = cell.set_index("seed").index.intersection(frozen_cell.index)
            if len(shared):
                gain = frozen_cell.loc[shared, "final_test_acc"] - cell.set_index("seed").loc[shared, "final_test_acc"]
                row["FrozenBN recovers"] = _ci(gain, alpha)
                if frozen_cell.loc[shared, "final_test_acc"].mean() > best[1].mean():
                    best = ("FrozenBN", frozen_cell.loc[shared, "final_test_acc"])
        row["best at this batch"] = best[0]
        row["remains"] = _welch(ref, best[1], alpha)
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, tuple)).any():
            table[column] = table[column].map(lambda v: f"{v[0]:+.2f} [{v[1]:+.2f}, {v[2]:+.2f}]"
                                              if isinstance(v, tuple) else "")
    return table
