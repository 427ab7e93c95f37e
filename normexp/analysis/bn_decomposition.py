"""Why BN fails at small batch: its accuracy under three evaluations of the same weights and under
FrozenBN, against the statistics batch (normexp.train.bn_evaluation; Wu & Johnson 2021).

`statistics_table`: per norm x batch size, the final test accuracy with the running averages
(population), precise population statistics and batch statistics, mean, std and n.
`precise_by_epoch`: per batch size and epoch, precise minus population statistics on the same
weights (paired by run), which tells stale running averages apart from the end of the schedule.
`decomposition`: at each batch size below the reference, BN's loss against the reference batch
(population statistics at both) and how much of it each remedy recovers, with (1 - alpha) CIs:
the two evaluations paired by run (the same weights), FrozenBN paired by seed (it trains as BN
until its switch), and what the best of them leaves against the same remedy at the reference
(unpaired Welch): the part of the loss that no evaluation or FrozenBN removes, i.e. what the
noisier training under small-batch statistics costs.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from normexp.analysis.formatting import mean_sd

EVALUATIONS = {"population": "final_test_acc", "precise": "final_test_acc_precise",
               "batch statistics": "final_test_acc_batch"}


def carries_extra_evaluations(runs: pd.DataFrame) -> bool:
    """Whether any run carries an evaluation besides the running averages."""
    return any(column in runs and runs[column].notna().any() for column in list(EVALUATIONS.values())[1:])


def evaluated_alike(runs: pd.DataFrame) -> None:
    """Raise ValueError if the runs that carry extra evaluations recorded different `evaluation` settings."""
    carrying = pd.Series(False, index=runs.index)
    for column in list(EVALUATIONS.values())[1:]:
        if column in runs:
            carrying |= runs[column].notna()
    settings = runs.loc[carrying, "evaluation"].dropna().unique()
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
            row[name] = mean_sd(values) if len(values) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def precise_by_epoch(epochs: pd.DataFrame, bn: str, alpha: float) -> pd.DataFrame:
    """Precise minus population test accuracy of `bn` at each batch size (rows) and evaluated epoch
    (columns), mean over seeds with its (1 - alpha) CI, paired by run."""
    rows = epochs[(epochs["norm"] == bn) & epochs["test_acc"].notna()]
    if "test_acc_precise" not in rows:
        return pd.DataFrame()
    rows = rows[rows["test_acc_precise"].notna()].assign(gain=lambda r: r["test_acc_precise"] - r["test_acc"])
    if rows.empty:
        return pd.DataFrame()
    table = {(batch, epoch): _interval(_ci(cell["gain"], alpha))
             for (batch, epoch), cell in rows.groupby(["batch_size", "epoch"])}
    frame = pd.Series(table).unstack()
    frame.index.name, frame.columns = "batch", [f"epoch {e}" for e in frame.columns]
    return frame.reset_index()


def _interval(value: object) -> str:
    """A (mean, CI low, CI high) as "+m [+l, +h]"; without a CI (one seed) as "+m (no CI)"."""
    if not isinstance(value, tuple):
        return ""
    mean, low, high = value
    return f"{mean:+.2f} (no CI)" if math.isnan(low) else f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"


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
    by run), FrozenBN (`frozen` norm's population minus BN's, paired by seed). Then the remedy with
    the highest mean at b (so chosen after seeing the data: read its CI as optimistic), and what it
    leaves: the same remedy at the reference minus at b (Welch), the loss that remains when both
    batch sizes get it (population at the reference where the remedy did not run there; `remains
    against` says which). Each as mean [CI low, CI high], or the mean alone with one seed."""
    bn_runs = runs[runs["norm"] == bn]
    frozen_runs = runs[runs["norm"] == frozen] if frozen is not None else runs.iloc[0:0]

    def accuracy(name: str, batch: int) -> pd.Series:
        """Each seed's final accuracy with this remedy at this batch (population: none)."""
        source = frozen_runs if name == "FrozenBN" else bn_runs
        cell = source[source["batch_size"] == batch].set_index("seed")
        column = "final_test_acc" if name in ("population", "FrozenBN") else EVALUATIONS[name]
        return cell[column].dropna() if column in cell else pd.Series(dtype=float)

    rows = []
    for batch in sorted(b for b in bn_runs["batch_size"].unique() if b < reference):
        population = accuracy("population", batch)
        row = {"batch": batch, "n": len(population),
               "BN loss vs reference": _welch(accuracy("population", reference), population, alpha)}
        means = {"population": population.mean()}
        for name in ("precise", "batch statistics", "FrozenBN"):
            remedy = accuracy(name, batch)
            shared = remedy.index.intersection(population.index)
            if len(shared):
                row[f"{name} recovers"] = _ci(remedy.loc[shared] - population.loc[shared], alpha)
                means[name] = remedy.mean()
        best = max(means, key=means.get)  # type: ignore[arg-type]  # dict.get's overloads
        row["best at this batch"] = best
        against = best if len(accuracy(best, reference)) else "population"  # a remedy not run at the reference
        row["remains"] = _welch(accuracy(against, reference), accuracy(best, batch), alpha)
        row["remains against"] = f"{against} at {reference}"
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in table.columns:
        if table[column].map(lambda v: isinstance(v, tuple)).any():
            table[column] = table[column].map(_interval)
    return table
