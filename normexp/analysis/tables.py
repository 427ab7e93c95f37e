"""Tables computed from finished runs (the verdict is normexp.analysis.verdict)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
from scipy import stats

from normexp.analysis.formatting import mean_sd
from normexp.criteria import Criteria


def accuracy_table(runs: pd.DataFrame, axes: Sequence[str] = ()) -> pd.DataFrame:
    """Final test accuracy mean, std (missing for a single run) and n per norm x batch size (x each
    further swept setting in `axes`), and the mean of each run's median over its last 5 evaluated
    epochs (the GN paper's metric) where the runs carry it."""
    grouped = runs.groupby(["norm", "batch_size", *axes])
    table = grouped["final_test_acc"].agg(acc_mean="mean", acc_std="std", n="count").reset_index()
    if "median5_test_acc" in runs:
        table["median5_mean"] = grouped["median5_test_acc"].mean().to_numpy()
    return table


def fit_table(runs: pd.DataFrame, axes: Sequence[str] = ()) -> pd.DataFrame:
    """Fitting against generalization per norm x batch size (x each further swept setting in
    `axes`): the mean final train accuracy (on the augmented training images of the last epoch),
    the mean final test accuracy, and test minus train, a norm's generalization gap; n runs."""
    table = runs.assign(test_minus_train=runs["final_test_acc"] - runs["final_train_acc"])
    return (table.groupby(["norm", "batch_size", *axes])
            .agg(train_acc=("final_train_acc", "mean"), test_acc=("final_test_acc", "mean"),
                 test_minus_train=("test_minus_train", "mean"), n=("final_test_acc", "count")).reset_index())


def compare_sweeps(before: pd.DataFrame, after: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Two sweeps of the same runs (e.g. a rerun with other code, or on another device), paired by run
    name, which is the run's identity (a code change that alters a default renames runs: they are
    then unpaired). Per norm x batch size: accuracy mean +- std in each, after minus before with the
    paired t (1 - alpha) CI over its runs (a pair shares its seed, so its initialization and data
    order), the largest per-run difference, and the compute minutes of each. Runs in only one sweep
    are left out (`unpaired_runs` lists them)."""
    for name, sweep in (("before", before), ("after", after)):
        repeated = sorted(set(sweep["run"][sweep["run"].duplicated()]))
        if repeated:
            raise ValueError(f"the {name} sweep holds run(s) more than once: {', '.join(repeated)}")
    shared = sorted(set(before["run"]) & set(after["run"]))
    old_runs, new_runs = (frame.set_index("run").loc[shared] for frame in (before, after))
    rows = []
    for (norm, batch), new in new_runs.groupby(["norm", "batch_size"]):
        old = old_runs.loc[new.index]
        old_acc, new_acc = old["final_test_acc"], new["final_test_acc"]
        difference = new_acc - old_acc
        low, high = (stats.ttest_rel(new_acc, old_acc).confidence_interval(1 - alpha) if len(new) > 1
                     else (float("nan"), float("nan")))
        rows.append({
            "norm": norm, "batch": batch, "n": len(new),
            "before acc %": mean_sd(old_acc), "after acc %": mean_sd(new_acc),
            "after - before": difference.mean(), "ci low": low, "ci high": high,
            "largest per-run difference": difference.abs().max(),
            "minutes before": old["compute_seconds"].sum() / 60, "minutes after": new["compute_seconds"].sum() / 60,
        })
    return pd.DataFrame(rows)


def unpaired_runs(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, list[str]]:
    """The finished runs of each sweep that the other lacks (by run name)."""
    return {"only before": sorted(set(before["run"]) - set(after["run"])),
            "only after": sorted(set(after["run"]) - set(before["run"]))}


ERROR_HEADER = "test error (%)"  # the error table's label column: what its norms' rows hold


def gap_label(bn: str, gn: str) -> str:
    """The error table's row of the verdict's `bn - gn`: accuracy points, so with the verdict's sign
    (> 0: BN ahead), and the unit in its name since the table's other rows are error."""
    return f"{bn} - {gn} (accuracy points)"


def error_table(runs: pd.DataFrame, criteria: Criteria, axes: Sequence[str] = ()) -> pd.DataFrame:
    """GN-paper style: test error (%) by batch size (largest first) for every norm (x each further
    swept setting in `axes`), and the criteria's BN - GN in accuracy points (`gap_label`; at each value
    of the axes)."""
    acc = accuracy_table(runs, axes).pivot_table(index=["norm", *axes], columns="batch_size", values="acc_mean")
    error = 100.0 - acc[sorted(acc.columns, reverse=True)]
    bn, gn = criteria.bn, criteria.gn
    norms = error.index.get_level_values("norm")
    if bn in norms and gn in norms:
        if axes:
            gap = error.xs(gn, level="norm") - error.xs(bn, level="norm")
            gap.index = pd.MultiIndex.from_tuples([(gap_label(bn, gn), *(k if isinstance(k, tuple) else (k,)))
                                                   for k in gap.index], names=error.index.names)
            error = pd.concat([error, gap.dropna(how="all")])
        else:
            error.loc[gap_label(bn, gn)] = error.loc[gn] - error.loc[bn]
    error.columns = [f"batch {b}" for b in error.columns]
    return error.rename_axis(index={"norm": ERROR_HEADER}).round(2)


def epochs_to_reach(epochs: pd.DataFrame, thresholds: Sequence[float]) -> pd.DataFrame:
    """Per run: the first epoch whose test accuracy reaches each threshold (NaN if never)."""
    rows = []
    for run, rows_of_run in epochs.groupby("run"):
        row = {"run": run}
        for t in thresholds:
            reached = rows_of_run[rows_of_run["test_acc"].fillna(0.0) >= t]["epoch"]
            row[f"epochs_to_{t:g}"] = reached.min() if len(reached) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", *(f"epochs_to_{t:g}" for t in thresholds)])


def thresholds_from(runs: pd.DataFrame, count: int = 4) -> list[float]:
    """Accuracy thresholds that these runs reach: the `count` highest multiples of 10 at or below
    the best final test accuracy (e.g. 30, 40, 50, 60 for a best of 61.3)."""
    top = int(runs["final_test_acc"].max() // 10) * 10 if len(runs) else 0
    return [float(t) for t in range(max(10, top - 10 * (count - 1)), top + 1, 10)]


def convergence_table(runs: pd.DataFrame, epochs: pd.DataFrame, thresholds: Sequence[float],
                      axes: Sequence[str] = ()) -> pd.DataFrame:
    """Mean epochs to reach each accuracy threshold (over seeds that reached it), how many did, and
    the final train loss and accuracy, per norm x batch size (x `axes`); a threshold no run reached
    is left out."""
    reached_by_any = epochs["test_acc"].max() if len(epochs) else float("nan")
    thresholds = [t for t in thresholds if t <= reached_by_any]
    merged = runs.merge(epochs_to_reach(epochs, thresholds), on="run", how="left")
    grouped = merged.groupby(["norm", "batch_size", *axes])
    columns = [f"epochs_to_{t:g}" for t in thresholds]
    table = grouped[columns].mean()
    for t in thresholds:
        table[f"reached_{t:g}"] = grouped[f"epochs_to_{t:g}"].count()
    table["final_train_loss"] = grouped["final_train_loss"].mean()
    table["final_train_acc"] = grouped["final_train_acc"].mean()
    return table.reset_index().round(3)
